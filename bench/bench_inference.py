"""Inference speed of the three separators on 10 s of stereo audio, ours vs bytesep (PyTorch).

    python bench/bench_inference.py [--archs ...] [--seconds 10] [--repeats 3]

For every architecture it times, each in a fresh subprocess (allocators and thread pools do not
interfere) and with tcmalloc preloaded (LD_PRELOAD; CPU PyTorch needs it, ours gains 5-12 %):
  * resunet_jax: one jit-compiled ``model.apply`` on a (1, L, 2) batch after compilation (median
    of --repeats), with XLA's own convolutions ("xla") and with the "cpu" backend
    (``resunet_jax.backends``, what the separation tools use on CPU hosts), plus the FLOPs XLA's
    cost analysis reports, per second of audio;
  * bytesep's model (``resunet_jax.testing.bytesep_reference``) in eval mode under
    ``torch.no_grad``, when torch, torchlibrosa and bytesep import.
Weights are random: speed does not depend on them. Prints a table and the ratio bytesep / ours
(ours = the faster backend).
"""
import argparse
import os
import statistics
import sys
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCHS = ("mobilenet_subbandtime", "resunet143_subbandtime", "resunet143_ismir2021")
SAMPLE_RATE = 44100


def _pqmf_dir():
  path = os.environ.get("RESUNET_SHARED") or os.path.join(ROOT, "..", "shared")
  return os.path.join(path, "data", "pqmf")


def worker_jax(arch, seconds, repeats, backend="xla"):
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resunet_jax import models  # pylint: disable=g-import-not-at-top

  model = models.build_model(arch, conv_backend=backend)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  length = int(seconds * SAMPLE_RATE)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, length, 2)) * 0.1, jnp.float32)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  start = time.perf_counter()
  compiled = fn.lower(variables, x).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  compiled(variables, x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(variables, x).block_until_ready()
    times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "compile_s": compile_s,
          "gflops_per_audio_s": flops / seconds / 1e9}


def worker_torch(arch, seconds, repeats):
  sys.path.insert(0, HERE)
  import bytesep_shim  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  model = bytesep_shim.make_model(arch, pqmf_dir=_pqmf_dir()).eval()
  length = int(seconds * SAMPLE_RATE)
  x = torch.randn(1, 2, length) * 0.1
  with torch.no_grad():
    model({"waveform": x})
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      model({"waveform": x})
      times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "threads": torch.get_num_threads()}


def _run_worker(kind, arch, args, preload, backend="xla"):
  return workers.run(__file__, ["--worker", kind, "--archs", arch, "--seconds", str(args.seconds),
                                "--repeats", str(args.repeats), "--backend", backend],
                     tcmalloc=preload)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archs", nargs="+", default=list(ARCHS))
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--worker", choices=("jax", "torch"), default=None)
  parser.add_argument("--backend", default="xla", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    try:
      if args.worker == "jax":
        result = worker_jax(args.archs[0], args.seconds, args.repeats, args.backend)
      else:
        result = worker_torch(args.archs[0], args.seconds, args.repeats)
    except Exception as e:  # pylint: disable=broad-except
      result = {"error": f"{type(e).__name__}: {e}"}
    workers.report(result)
    return

  have_tcmalloc = workers.have_tcmalloc()
  print(f"# {args.seconds:g} s stereo at 44.1 kHz, batch 1, median of {args.repeats} runs after "
        f"compile/warm-up; CPU cores: {os.cpu_count()}; tcmalloc: "
        f"{'yes' if have_tcmalloc else 'not installed (apt-get install libtcmalloc-minimal4)'}")
  header = (f"{'model':26s} {'ours xla s':>10s} {'ours cpu s':>10s} {'compile s':>9s} "
            f"{'GFLOP/audio s':>13s} {'bytesep s':>9s} {'bytesep/ours':>12s}")
  print(header)
  for arch in args.archs:
    xla = _run_worker("jax", arch, args, preload=have_tcmalloc, backend="xla")
    cpu = _run_worker("jax", arch, args, preload=have_tcmalloc, backend="cpu")
    theirs = ({"error": "skipped"} if args.no_torch
              else _run_worker("torch", arch, args, preload=have_tcmalloc))
    if "error" in xla or "error" in cpu:
      print(f"{arch:26s} ours failed: {xla.get('error') or cpu.get('error')}")
      continue
    best = min(xla["seconds"], cpu["seconds"])
    t_torch = theirs.get("seconds")
    ratio = f"{t_torch / best:12.2f}" if t_torch else f"{'n/a':>12s}"
    print(f"{arch:26s} {xla['seconds']:10.2f} {cpu['seconds']:10.2f} "
          f"{cpu['compile_s']:9.1f} {xla['gflops_per_audio_s']:13.1f} "
          f"{t_torch if t_torch else float('nan'):9.2f} {ratio}")
    if "error" in theirs:
      print(f"{'':26s} bytesep not timed: {theirs['error']}")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
