r"""Replicas: R runs of one config in one ``train.py`` (``config.replicas=R``) against R single runs.

    python bench/bench_replicas.py [--config configs/small.py] [--replicas 4] [--steps 100]
        [--methods auto,vmap] [--data musdb18] [--step_rounds 3] [--step_methods unroll,vmap,map]

Two measurements, both on one CPU device:

Compiled steps (``--step_rounds`` > 0; one fresh process): the one-run train step and the
replicated step of each ``--step_methods`` entry, compiled (compile time reported), then timed in
interleaved rounds -- R updates of the one-run step against one update of each replicated step,
the same batch -- so that the load of a shared machine falls on all of them alike; the median
over rounds is reported.

Whole runs (``--steps`` > 0): every run is the real command (``python train.py``) in a fresh work
directory with its own compilation cache (the default ``WORKDIR/xla_cache``: what a user running
them gets), on one CPU device, ``--steps`` updates, the config's validation and checkpoint at the
last update. Measured:

  * single: R runs one after another, seeds 0 .. R-1 -- the wall time of each and their sum;
  * replicated: one run with ``--config.replicas=R`` per ``--methods`` entry
    (``config.replica_method``: auto = unroll on CPU, vmap, unroll, map);
  * for each run the steady time per update, from clu's ``steps_per_sec`` reports after the first
    (an update of a replicated run is R replica-updates).

The issue's bar: the replicated run takes no longer than the R single runs. Prints tables and
JSON lines. Expected run time on 2 CPU cores: ~10 min for the compiled steps (map alone ~4 min),
~40 min for the whole runs (4 x ~3 min single runs, ~10 min replicated with unroll, ~16 min with
vmap). Measured (README "Replicas"): whole runs 737 s for 4 single runs, 595 s unroll, 958 s vmap;
compiled steps (7 rounds) 3.66 s single x 4, 3.65 s unroll, 8.30 s vmap.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_RATE = re.compile(r"\] steps_per_sec=([0-9.eE+-]+)")


def train_py(config, workdir, steps, data, extra):
  """(wall seconds, steady seconds per update, log) of one ``train.py`` run."""
  warm_up = max(steps // 10, 1)
  args = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}",
          f"--config.num_train_steps={steps}", f"--config.schedule.decay_steps={steps}",
          f"--config.schedule.warm_up_steps={warm_up}", f"--config.data.name={data}",
          "--config.num_devices=1", "--config.log_every_steps=10"]
  args += [f"--config.{k}={v}" for k, v in extra.items()]
  env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  if workers.have_tcmalloc():
    env["LD_PRELOAD"] = workers.TCMALLOC
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  log = proc.stdout + proc.stderr
  if proc.returncode != 0:
    raise RuntimeError(f"train.py {' '.join(args[2:])} failed ({proc.returncode}):\n{log[-3000:]}")
  rates = [float(r) for r in _RATE.findall(log)][1:]  # the first report includes compilation
  per_update = 1.0 / statistics.median(rates) if rates else float("nan")
  return seconds, per_update, log


def worker_steps(config_path, replicas, rounds, methods):
  """{name: (compile seconds, [seconds per round])}: R one-run updates vs one replicated update."""
  sys.path.insert(0, ROOT)
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import inputs  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import program as program_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, config_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  host = None
  runs = {}
  for name in ["single"] + methods:
    config = module.get_config()
    config.data.name = "random"  # the same fixed batch for all: the step alone is timed
    config.replicas = 1 if name == "single" else replicas
    config.replica_method = "auto" if name == "single" else name
    program = program_lib.train_program(
        config, program_lib.make_mesh_for(config, jax.devices()[:1]))
    if host is None:
      host = inputs.RandomBatches(config.data, seed=0,
                                  global_batch_size=config.global_batch_size).batch(0)
    if name == "single":
      batch = step_lib.global_batch(program.mesh, host)
    else:
      batch = step_lib.replica_global_batch(
          program.mesh, program.batch_shape(),
          {k: np.stack([v] * replicas) for k, v in host.items()})
    state, metrics = program.init_state(), program.empty_metrics()
    start = time.perf_counter()
    state, metrics = program.train_step(state, batch, metrics)
    jax.block_until_ready(state)
    runs[name] = [program.train_step, state, batch, metrics, time.perf_counter() - start, []]
  for _ in range(rounds):
    for name, run in runs.items():
      train_step, state, batch, metrics = run[:4]
      start = time.perf_counter()
      for _ in range(replicas if name == "single" else 1):
        state, metrics = train_step(state, batch, metrics)
      jax.block_until_ready(state)
      run[5].append(time.perf_counter() - start)
      run[1], run[3] = state, metrics
  return {name: (run[4], run[5]) for name, run in runs.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/small.py")
  parser.add_argument("--replicas", type=int, default=4)
  parser.add_argument("--steps", type=int, default=100, help="0: skip the whole runs")
  parser.add_argument("--methods", default="auto")
  parser.add_argument("--data", default="musdb18")
  parser.add_argument("--skip_single", action="store_true")
  parser.add_argument("--step_rounds", type=int, default=3, help="0: skip the compiled steps")
  parser.add_argument("--step_methods", default="unroll,vmap,map")
  parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker is not None:
    config, replicas, rounds, methods = args.worker
    workers.report(worker_steps(config, int(replicas), int(rounds), methods.split(",")))
    return
  if args.step_rounds > 0:
    steps = workers.run(__file__, ["--worker", args.config, str(args.replicas),
                                   str(args.step_rounds), args.step_methods], tcmalloc=True)
    if "error" in steps:
      print(f"compiled steps failed: {steps['error']}")
    else:
      print(f"\n{args.config}: {args.replicas} replica-updates on 1 CPU device ({os.cpu_count()} "
            f"cores), {args.step_rounds} interleaved rounds")
      print(f"{'step':<28} {'compile+1st s':>14} {'median s':>9} {'vs single':>10}   rounds")
      single = statistics.median(steps["single"][1])
      for name, (compile_s, rounds) in steps.items():
        label = (f"single x {args.replicas} updates" if name == "single"
                 else f"replicas={args.replicas} {name}")
        median = statistics.median(rounds)
        print(f"{label:<28} {compile_s:>14.1f} {median:>9.2f} {median / single:>9.2f}x   "
              f"{', '.join(f'{r:.2f}' for r in rounds)}")
      print(json.dumps({"compiled_steps": steps}), flush=True)
  if args.steps <= 0:
    return
  root = tempfile.mkdtemp(prefix="bench_replicas_")
  rows = []
  if not args.skip_single:
    for k in range(args.replicas):
      seconds, per_update, _ = train_py(args.config, f"{root}/single_{k}", args.steps, args.data,
                                        {"seed": k})
      rows.append((f"single seed {k}", seconds, per_update))
      print(f"single seed {k}: {seconds:.1f} s, {per_update:.3f} s/update", flush=True)
  for method in args.methods.split(","):
    seconds, per_update, log = train_py(args.config, f"{root}/replicated_{method}", args.steps,
                                        args.data, {"replicas": args.replicas,
                                                    "replica_method": method})
    used = re.search(r"per device \((\w+)\)", log)
    name = f"replicas={args.replicas} {method}" + (f" ({used.group(1)})" if used else "")
    rows.append((name, seconds, per_update))
    print(f"{name}: {seconds:.1f} s, {per_update:.3f} s/update", flush=True)

  print(f"\n{args.config}, {args.steps} updates, {args.data} data, 1 CPU device "
        f"({os.cpu_count()} cores)")
  print(f"{'run':<32} {'wall s':>9} {'s/update':>9} {'s per replica-update':>21}")
  singles = [r for r in rows if r[0].startswith("single")]
  for name, seconds, per_update in rows:
    share = per_update / (1 if name.startswith("single") else args.replicas)
    print(f"{name:<32} {seconds:>9.1f} {per_update:>9.3f} {share:>21.3f}")
  if singles:
    total = sum(r[1] for r in singles)
    steady = sum(r[2] for r in singles)
    print(f"{f'{len(singles)} single runs, one after another':<32} {total:>9.1f} {steady:>9.3f}")
    for name, seconds, per_update in rows:
      if not name.startswith("single"):
        print(f"  {name}: wall {seconds / total:.2f}x, per update {per_update / steady:.2f}x "
              "the single runs'")
  print(json.dumps({"config": args.config, "steps": args.steps, "replicas": args.replicas,
                    "rows": rows}))


if __name__ == "__main__":
  main()
