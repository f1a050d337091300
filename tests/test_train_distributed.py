"""Several processes (jax.distributed on localhost, gloo collectives), as on a pod or a GPU node.

2 processes x 2 CPU devices train with the real tf.data pipeline on the built-in data, each process
with its own local segment cache and one shared work directory: they train, validate and save;
a SIGTERM to ONE of them makes both save the same step (JAX's preemption sync point) and exit with
the preemption code; the run then resumes on 1 process x 4 devices (same device count) and ends
at the parameters of an uninterrupted run, and on 1 x 2 (elastic: another device count, same
global batch) at the saved step. Processes that do not see the same work directory stop with a
clear error instead of hanging.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import smoke  # noqa: E402
from resunet_jax import checkpoint as model_checkpoint  # noqa: E402
from resunet_jax.training import history  # noqa: E402
from resunet_jax.training import loop  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 6
# SGD: Adam would blow the rounding noise of zero gradients (a conv bias before a BatchNorm) up to
# lr-sized steps, and two processes reduce in another order than one. A small rate: at 0.5 the
# rounding differences grew 7-18x per update (3e-7 -> 9e-5 in 6), at 0.05 they stay ~2e-7.
OVERRIDES = {"model.levels": 1, "optimizer.name": "sgd", "optimizer.learning_rate": 0.05,
             "num_train_steps": STEPS, "eval_every_steps": 3, "checkpoint_every_steps": 1,
             "keep_checkpoints": STEPS, "log_every_steps": 1}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config(cache, **extra):
  config = smoke.get_config()
  config.update_from_flattened_dict(dict(OVERRIDES, **extra))
  config.compilation_cache_dir = cache
  return config


def _variables(workdir, step):
  tree = model_checkpoint.restore_item(os.path.join(workdir, "checkpoints", str(step),
                                                    "variables"))
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _relative_difference(a, b):
  assert sorted(a) == sorted(b)
  scale = max(np.max(np.abs(v)) for v in a.values())
  return max(np.max(np.abs(a[k] - b[k])) for k in a) / scale


def _launch(workdir, cache, tmp_path, extra_args=(), num_processes=2, workdirs=None):
  """``num_processes`` train.py processes of 2 CPU devices each; process i reads its segment
  cache from its own folder."""
  port = _free_port()
  procs = []
  for i in range(num_processes):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO,
               TF_CPP_MIN_LOG_LEVEL="2", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
    env.pop("XLA_FLAGS", None)
    args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    args += [f"--config.compilation_cache_dir={cache}",
             f"--config.data.cache_dir={tmp_path / f'segment_cache_process_{i}'}"]
    procs.append(subprocess.Popen(
        [sys.executable, "train.py", "--config=configs/smoke.py",
         f"--workdir={workdirs[i] if workdirs else workdir}", *args, *extra_args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def _collect(procs, on_line=None):
  logs = [[] for _ in procs]

  def read(i):
    for line in procs[i].stdout:
      logs[i].append(line)
      if on_line:
        on_line(i, line)
  readers = [threading.Thread(target=read, args=(i,)) for i in range(len(procs))]
  for r in readers:
    r.start()
  codes = [p.wait(timeout=900) for p in procs]
  for r in readers:
    r.join()
  return codes, ["".join(log) for log in logs]


def test_preempted_multi_process_run_resumes_elastically(tmp_path, training_compilation_cache):
  cache = training_compilation_cache
  # The uninterrupted reference: one process, 4 of this session's 8 devices, same data.
  reference = str(tmp_path / "reference")
  loop.train_and_evaluate(_config(cache, num_devices=4,
                                  **{"data.cache_dir": str(tmp_path / "cache_ref")}), reference)

  # 2 processes x 2 devices; SIGTERM to process 1 only, once it has made two updates.
  workdir = str(tmp_path / "run")
  procs = _launch(workdir, cache, tmp_path)
  sent = threading.Event()

  def on_line(i, line):
    if i == 1 and not sent.is_set() and "step 2/" in line:
      procs[1].send_signal(signal.SIGTERM)
      sent.set()
  codes, logs = _collect(procs, on_line)
  assert sent.is_set(), logs[1][-3000:]
  for code, log in zip(codes, logs):
    assert code == loop.PREEMPTED_EXIT_CODE, log[-4000:]  # non-zero: a scheduler restarts them
  assert "process 1 of 2, 2 local / 4 global devices" in logs[1], logs[1][-3000:]
  saved = []
  for log in logs:
    marker = "Preemption notice: saved a checkpoint at step "
    assert marker in log, log[-3000:]
    saved.append(int(log.split(marker)[1].split()[0]))
  assert saved[0] == saved[1], saved  # both processes stopped at the same step
  stopped = saved[0]
  assert 2 <= stopped < STEPS
  steps_on_disk = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                         if d.isdigit())
  assert max(steps_on_disk) == stopped
  # Validated before it stopped iff it got to step 3 (validation every 3 updates, into the log).
  if stopped >= 3:
    assert "step 3 validation: val/sdr_vocals" in logs[0]
  # What the two processes saved is the single-process run's state at that step.
  assert _relative_difference(_variables(workdir, stopped), _variables(reference, stopped)) <= 2e-6
  meta = json.load(open(os.path.join(workdir, "checkpoints", str(stopped), "meta", "metadata")))
  assert (meta["devices"], meta["processes"]) == (4, 2)
  elastic = str(tmp_path / "run_on_2_devices")
  shutil.copytree(workdir, elastic)

  # Resume on 1 process x 4 devices (the device count did not change): the uninterrupted run's
  # parameters, to float rounding (another process count reduces in another order).
  state = loop.train_and_evaluate(_config(cache, num_devices=4,
                                          **{"data.cache_dir": str(tmp_path / "cache_ref")}),
                                  workdir)
  assert int(state.step) == STEPS
  assert history.starts(workdir)[-1]["resumed_from_step"] == stopped
  difference = _relative_difference(_variables(workdir, STEPS), _variables(reference, STEPS))
  print(f"\n2x2 preempted at {stopped} + 1x4 vs uninterrupted 1x4: {difference:.2e}")
  assert difference <= 2e-6  # measured 1.7e-7
  # Resume the copy on 1 x 2 (elastic): the same global batch and the same data position, so the
  # same updates up to float rounding (synchronised BatchNorm: global-batch statistics).
  state = loop.train_and_evaluate(_config(cache, num_devices=2,
                                          **{"data.cache_dir": str(tmp_path / "cache_ref")}),
                                  elastic)
  assert int(state.step) == STEPS
  record = history.starts(elastic)[-1]
  assert (record["resumed_from_step"], record["devices"], record["processes"]) == (stopped, 2, 1)
  difference = _relative_difference(_variables(elastic, STEPS), _variables(reference, STEPS))
  print(f"2x2 preempted at {stopped} + 1x2 vs uninterrupted 1x4: {difference:.2e}")
  assert difference <= 2e-6  # measured 2.0e-7


def test_processes_that_do_not_share_the_work_directory_stop_with_a_clear_error(
    tmp_path, training_compilation_cache):
  """Simulated: each process gets its own folder, as a local path on hosts without shared
  storage would give them."""
  first = tmp_path / "host0" / "run"
  second = tmp_path / "host1" / "run"
  first.parent.mkdir()
  second.parent.mkdir()
  procs = _launch(None, training_compilation_cache, tmp_path,
                  workdirs=[str(first), str(second)],
                  extra_args=["--config.data.name=random"])
  codes, logs = _collect(procs)
  for code, log in zip(codes, logs):
    assert code == 1, log[-3000:]
    assert "do not see the same work directory" in log, log[-3000:]
    assert "process 1: no checkpoint (does not see process 0's files)" in log, log[-3000:]
  assert not (second / "checkpoints" / "1").exists()
