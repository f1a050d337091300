"""One residual stage of the paper model, cross-compiled for one TPU v5e chip: where the bytes go.

    python bench/bench_aot_stage.py                          # the README's rows (~5 min each here)
    python bench/bench_aot_stage.py --channels 32 --folds 1,4 --remats none,unit:dots_saveable
    python bench/bench_aot_stage.py --folds 4 --remats none --chunks 1,4   # the chunked layout

Compiles the forward and backward pass of ``layers.ResStage`` (4 residual units, the paper model's
encoder stage without pooling, with its InPlaceABN second norm) on (B, 304 frames, 1024 bins, C channels) bfloat16 activations in
training mode, for each fold of the frequency-folded layout (``resunet_jax.folding``; fold 1 = the
natural NHWC layout), each remat policy and each number of frequency chunks (``folding.chunk``:
the batch of B examples computed as B * K chunks of the frequency axis, with the convolutions'
edge terms), and prints the compiler's figures: FLOPs, bytes accessed (``cost_analysis``),
temporaries (``memory_analysis``), copies. These are XLA's
estimates for a v5e chip (libtpu from ``pip install '.[tpu]'``), not timings.
"""
import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from resunet_jax import aot  # noqa: E402  pylint: disable=g-import-not-at-top


def compile_stage(device, channels, batch, fold, remat, frames=304, bins=1024, second_norm="abn",
                  chunks=1):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import layers  # pylint: disable=g-import-not-at-top
  sharding = jax.sharding.SingleDeviceSharding(device)
  stage = layers.ResStage(features=channels, num_blocks=4, dtype=jnp.bfloat16, fold=fold,
                          remat=remat, second_norm=second_norm, chunks=chunks)
  variables = jax.eval_shape(lambda: stage.init(
      jax.random.PRNGKey(0), jnp.zeros((chunks, 8, 2 * fold, fold * channels), jnp.bfloat16),
      train=False))

  def loss(params, stats, x):
    y, updates = stage.apply({"params": params, "batch_stats": stats}, x, train=True,
                             mutable=["batch_stats"])
    return jnp.mean(y.astype(jnp.float32)), updates

  def abstract(tree):
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)

  x = jax.ShapeDtypeStruct((batch * chunks, frames, bins // fold // chunks, fold * channels),
                           jnp.bfloat16, sharding=sharding)
  start = time.time()
  compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(
      abstract(variables["params"]), abstract(variables["batch_stats"]), x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  return {"flops": cost["flops"], "bytes": cost["bytes accessed"],
          "temp": memory.temp_size_in_bytes,
          "copies": len(re.findall(r" copy\(", compiled.as_text())),
          "seconds": time.time() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--channels", default="32")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--folds", default="1,4,8")
  parser.add_argument("--remats", default="none,unit,unit:dots_saveable")
  parser.add_argument("--chunks", default="1")
  args = parser.parse_args()
  topology = aot.parse_topology("v5e:1x1")
  aot.configure_environment(topology)
  device = aot.topology_devices(topology)[0]
  print(f"ResStage fwd+bwd, bf16, batch {args.batch} x 304 x 1024, one {device.device_kind} "
        f"(libtpu {aot.libtpu_version()}; compiler estimates, not timings)")
  print("| channels | fold | chunks | remat | GFLOP | GB accessed | FLOP/B | temporaries (GiB) | "
        "copies |")
  print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
  for channels in (int(c) for c in args.channels.split(",")):
    for fold in (int(s) for s in args.folds.split(",")):
      for remat, chunks in ((m, int(k)) for m in args.remats.split(",")
                            for k in args.chunks.split(",")):
        if fold == 1 and remat != "none":
          continue
        r = compile_stage(device, channels, args.batch, fold, remat, chunks=chunks)
        print(f"| {channels} | {fold} | {chunks} | {remat} | {r['flops'] / 1e9:.1f} | "
              f"{r['bytes'] / 1e9:.2f} | "
              f"{r['flops'] / r['bytes']:.1f} | {r['temp'] / 2**30:.2f} | {r['copies']} |",
              flush=True)


if __name__ == "__main__":
  main()
