"""Float32 / bfloat16 error of the model's layouts against its float64 model, on real music.

    python bench/bench_layout_precision.py                 # paper model, stempeg's excerpt
    python bench/bench_layout_precision.py --seconds 3 --eval

The layouts (``model.layout``: natural; folded unchunked, ``folding.SUBLANES = 1``; folded in
chunks, what a TPU runs in training) compute the same function; this prints how far each is, in
float32 and bfloat16 compute, from the float64 natural model, as the relative L2 of the output
waveform. Training mode by default (batch statistics: where the folded layout is chunked, one
example -> 8 chunks); ``--eval`` uses the running statistics (no chunks). Weights: the parity
fixtures' rule weights (``bench_precision.state_dict("...", "rule")``). Input: the mixture of the
MUSDB18 excerpt that ships with stempeg, ``--seconds`` from its start. Runs on whatever JAX device
is there (this CPU: ~5 minutes for 6 s).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resunet143_ismir2021")
  parser.add_argument("--seconds", type=float, default=6.0)
  parser.add_argument("--eval", action="store_true", help="running statistics (no chunks)")
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import stempeg  # pylint: disable=g-import-not-at-top
  import bench_precision  # pylint: disable=g-import-not-at-top
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  from resunet_jax import folding  # pylint: disable=g-import-not-at-top

  audio, rate = stempeg.read_stems(stempeg.example_stem_path(), stem_id=[0])
  x = np.asarray(audio, np.float64)[: int(args.seconds * rate)][None]
  model64, variables = convert.from_bytesep(bench_precision.state_dict(args.arch, "rule"),
                                            args.arch, dtype=jnp.float64)
  model64 = model64.clone(layout="natural", conv_backend="xla")
  train = not args.eval

  def forward(model, v, x):
    return model.apply(v, x, train=train, mutable=["batch_stats"])[0]

  ref = np.asarray(jax.jit(lambda v, x: forward(model64, v, x))(variables, jnp.asarray(x)))
  v32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables)
  print(f"{args.arch}, {x.shape[1] / rate:.2f} s of stempeg's excerpt, "
        f"{'training' if train else 'inference'} mode, on {jax.devices()[0].platform}; "
        "relative L2 of the output against the float64 natural model")
  print("| layout | chunks | float32 | bfloat16 |")
  print("|---|---:|---:|---:|")
  sublanes = folding.SUBLANES
  for name, layout, sub in (("natural", "natural", sublanes),
                            ("folded, unchunked", "folded", 1),
                            ("folded", "folded", sublanes)):
    folding.SUBLANES = sub
    errors = []
    for dtype in (None, "bfloat16"):
      model = model64.clone(layout=layout, dtype=dtype, param_dtype=jnp.float32)
      y = np.asarray(jax.jit(lambda v, x, m=model: forward(m, v, x))(
          v32, jnp.asarray(x, jnp.float32)), np.float64)
      errors.append(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    print(f"| {name} | {model.chunks(1, train)} | {errors[0]:.2e} | {errors[1]:.2e} |",
          flush=True)
  folding.SUBLANES = sublanes


if __name__ == "__main__":
  main()
