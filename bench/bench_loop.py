"""Training-loop overhead: time per update of ``train.py`` against the bare compiled step.

    python bench/bench_loop.py [--configs small,mobilenet] [--steps 60] [--repo DIR]

For each configuration, each measurement in a fresh process:
  * bare: the compiled train step of ``resunet_jax.training.step`` called back to back on one
    fixed device batch (no data pipeline, no logging, no checkpoints): seconds per update after
    warm-up, synchronised once at the end (as asynchronous dispatch allows);
  * train.py: two runs of the real command (``--config.data.name`` as given: ``random`` =
    numpy-made batches, ``musdb18`` = the tf.data pipeline on the built-in data), one of W and one
    of W + N updates, each in a fresh work directory with a shared, warm compilation cache; the
    difference of their wall times divided by N is the steady-state time per update, start-up,
    compilation, data preparation and the final checkpoint cancelling out.
Overhead = train.py / bare - 1. ``--repo`` points at another checkout (e.g. an older commit in a
``git worktree``) to measure its train.py the same way (its bare step is measured with this
checkout's code if the older API differs). ``--accelerator`` measures on the attached GPU/TPU
(default: the CPU, accelerators hidden). Prints one table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFIGS = {
    # The quick-start config as it is.
    "small": ("configs/small.py", {}),
    # The authors' MobileNet, at a CPU-sized batch (2 x 1 s instead of 16 x 3 s).
    "mobilenet": ("configs/mobilenet_subbandtime_vocals.py",
                  {"global_batch_size": 2, "data.segment_seconds": 1.0}),
}
COMMON = {"eval_every_steps": 0, "checkpoint_every_steps": 0, "num_devices": 1}


def _overrides(name, data):
  path, extra = CONFIGS[name]
  return path, dict(COMMON, **extra, **{"data.name": data})


def worker_bare(name, data, steps, repo):
  sys.path.insert(0, repo)
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import inputs, loop, optim  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  path, overrides = _overrides(name, data)
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(repo, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(overrides)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  model = loop.build_model(config)
  tx = optim.make_optimizer(config)
  state = state_lib.init_train_state(model, tx, config.seed, sharding=step_lib.replicated(mesh))
  batches = inputs.train_batches(config, start_step=0)
  batch = step_lib.global_batch(mesh, next(batches))
  train_step = step_lib.make_train_step(mesh, model, tx, optim.make_schedule(config))
  args = (batch, step_lib.empty_metrics(mesh)) if hasattr(step_lib, "empty_metrics") else (batch,)
  for _ in range(3):
    out = train_step(state, *args)
    state = out[0]
    if len(args) == 2:
      args = (batch, out[1])
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = train_step(state, *args)
    state = out[0]
    if len(args) == 2:
      args = (batch, out[1])
  jax.block_until_ready(out)
  if hasattr(batches, "close"):
    batches.close()
  return {"seconds_per_step": (time.perf_counter() - start) / steps}


ACCELERATOR = False  # --accelerator: leave the GPUs visible to train.py


def _train_py(repo, name, data, steps, cache):
  path, overrides = _overrides(name, data)
  workdir = tempfile.mkdtemp(prefix="bench_loop_")
  args = [sys.executable, "train.py", f"--config={path}", f"--workdir={workdir}/run",
          f"--config.num_train_steps={steps}", f"--config.compilation_cache_dir={cache}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2")
  if not ACCELERATOR:
    env["CUDA_VISIBLE_DEVICES"] = ""
  if workers.have_tcmalloc():
    env["LD_PRELOAD"] = workers.TCMALLOC
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"train.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
  return seconds


def measure_train_py(repo, name, data, warm, steps, repeats):
  cache = tempfile.mkdtemp(prefix="bench_loop_cache_")
  _train_py(repo, name, data, warm, cache)  # fills the compilation cache and the data caches
  per_step = []
  for _ in range(repeats):
    short = _train_py(repo, name, data, warm, cache)
    long = _train_py(repo, name, data, warm + steps, cache)
    per_step.append((long - short) / steps)
  return statistics.median(per_step), per_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="small,mobilenet")
  parser.add_argument("--data", default="random,musdb18")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--warm", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--repo", default=ROOT)
  parser.add_argument("--accelerator", action="store_true",
                      help="time on the attached GPU/TPU (one device) instead of the CPU")
  parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
  args = parser.parse_args()
  global ACCELERATOR
  ACCELERATOR = args.accelerator
  if args.worker is not None:
    name, data, steps, repo = args.worker
    workers.report(worker_bare(name, data, int(steps), repo))
    return
  repo = os.path.abspath(args.repo)
  rows = []
  for name in args.configs.split(","):
    for data in args.data.split(","):
      bare = workers.run(__file__, ["--worker", name, data, str(args.steps), repo], tcmalloc=True)
      if "error" in bare and repo != ROOT:  # an older API: time the bare step with this code
        bare = workers.run(__file__, ["--worker", name, data, str(args.steps), ROOT],
                           tcmalloc=True)
      if "error" in bare:
        print(f"{name}/{data}: bare step failed: {bare['error']}")
        continue
      loop_s, all_s = measure_train_py(repo, name, data, args.warm, args.steps, args.repeats)
      rows.append((name, data, bare["seconds_per_step"], loop_s, all_s))
  print(f"\ntrain.py of {repo}")
  print(f"{'config':<10} {'data':<8} {'bare s/step':>12} {'train.py s/step':>16} {'overhead':>9}"
        "   train.py repeats")
  for name, data, bare, loop_s, all_s in rows:
    print(f"{name:<10} {data:<8} {bare:>12.4f} {loop_s:>16.4f} {100 * (loop_s / bare - 1):>8.1f}%"
          f"   {', '.join(f'{x:.4f}' for x in all_s)}")
  print(json.dumps({"rows": rows}))


if __name__ == "__main__":
  main()
