"""Training checkpoints (Orbax) and preemption.

Layout of a work directory (a local path or any URL Orbax and ``etils.epath`` take, e.g.
``gs://bucket/run``)::

  WORKDIR/config.json                 the first start's config (never rewritten)
  WORKDIR/config_history/start_N.json every start's config (``history``)
  WORKDIR/checkpoints/<step>/         one Orbax composite checkpoint per saved step:
      variables/   {"params", "batch_stats"[, "constants"]}   (what separation needs)
      model/       JSON: the model description (``models.describe``), beside the variables
      train/       {"step", "opt_state", "rng"}                (what resuming needs besides)
      meta/        JSON: step, data position, seed, global batch, validation metrics
  WORKDIR/events.out.tfevents.*       TensorBoard: metrics and validation audio (clu writers)
  WORKDIR/xla_cache/                  the persistent XLA compilation cache (default location)

The layout of a step directory is ``resunet_jax.checkpoint``'s (which reads it back for separation
and evaluation); this module writes it. Saves are asynchronous (the device-to-host copy happens
before ``save`` returns, the writes in a background thread) and atomic: Orbax writes a temporary
``<step>.orbax-checkpoint-tmp*`` and finalises it when complete (a rename on file systems, a commit
marker on object stores), so a process killed during a save leaves the previous checkpoints
intact. Kept: the last ``keep`` steps plus the step with the best validation SDR.

Preemption: with several processes, JAX's preemption sync point over the coordination service
(``CheckpointManager.reached_preemption``): a SIGTERM to any process is propagated to all, and all
stop at the same step, with no device collective per step. With one process, ``PreemptionGuard``'s
SIGTERM handler.
"""
import os
import signal
import threading
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from resunet_jax import checkpoint as model_checkpoint
from resunet_jax import fileutil
from resunet_jax.training import distributed

CHECKPOINT_DIR = model_checkpoint.CHECKPOINT_DIR
BEST_METRIC = model_checkpoint.BEST_METRIC
ITEMS = model_checkpoint.STEP_ITEMS
UNRESTORABLE_DIR = "checkpoints_unrestorable"


def _best_metric(metrics) -> float:
  value = float(metrics.get(BEST_METRIC, float("-inf")))
  return value if np.isfinite(value) else float("-inf")


class NoRestorableCheckpointError(RuntimeError):
  """Every checkpoint of the work directory failed to restore."""


class TrainCheckpoints:
  """Orbax CheckpointManager over ``WORKDIR/checkpoints`` with our items and retention policy."""

  def __init__(self, workdir, *, keep: int = 3, keep_best: bool = True,
               asynchronous: bool = True, read_only: bool = False):
    self.directory = fileutil.as_path(workdir) / CHECKPOINT_DIR
    policies = [ocp.checkpoint_managers.LatestN(n=max(int(keep), 1))]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=_best_metric, reverse=False, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_metric, best_mode="max",
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=asynchronous, cleanup_tmp_directories=not read_only,
        create=not read_only, read_only=read_only, save_interval_steps=0 if read_only else 1)
    model_checkpoint.quiet_orbax_logs()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best validation SDR, None when no checkpoint has one."""
    steps = [s for s in self.manager.all_steps() if self.manager.metrics(s)]
    return self.manager.best_step() if steps else None

  def all_steps(self):
    return list(self.manager.all_steps())

  def saved_replicas(self, step: int) -> Optional[int]:
    """How many replicas checkpoint ``step`` holds (1 for one run); None when its ``meta`` cannot
    be read (``restore_latest_good`` then deals with the damaged step)."""
    try:
      meta = model_checkpoint.read_step_meta(self.directory / str(step))
    except (OSError, ValueError) as e:
      logging.warning("Cannot read the meta item of checkpoint %d (%s).", step, e)
      return None
    return model_checkpoint.step_replicas(meta)

  def reached_preemption(self, step: int) -> bool:
    """Whether all processes reached JAX's preemption sync point at ``step`` (several processes
    only; always False in a single process)."""
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, meta: Dict[str, Any],
           metrics: Optional[Dict[str, float]] = None, *,
           model_description: Optional[Dict[str, Any]] = None) -> bool:
    """Starts an asynchronous save of ``state`` as ``step`` (``state.step``; passed in so that
    no device value is read here), with the model description beside the variables. False if
    that step exists."""
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(
        variables=ocp.args.StandardSave(state.variables()),
        model=ocp.args.JsonSave(_jsonable(model_description or {})),
        train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state,
                                     "rng": state.rng}),
        meta=ocp.args.JsonSave(_jsonable(meta)))
    clean = None
    if metrics is not None:
      clean = {k: (float(v) if np.isfinite(v) else float("-inf")) for k, v in metrics.items()}
    return self.manager.save(step, args=args, metrics=clean, force=True)

  def restore(self, step: int, abstract_state):
    """(state, meta) of ``step``, arrays laid out like ``abstract_state`` (ShapeDtypeStructs with
    shardings, e.g. replicated on the current mesh -- the device and process counts may differ
    from the run that saved it)."""
    variables = abstract_state.variables()
    train = {"step": abstract_state.step, "opt_state": abstract_state.opt_state,
             "rng": abstract_state.rng}
    out = self.manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(variables), train=ocp.args.StandardRestore(train),
        meta=ocp.args.JsonRestore()))
    v, t = out["variables"], out["train"]
    state = abstract_state.replace(
        step=t["step"], params=v["params"], batch_stats=v["batch_stats"],
        constants=v.get("constants", abstract_state.constants), opt_state=t["opt_state"],
        rng=t["rng"])
    return state, out["meta"]

  def restore_latest_good(self, abstract_state, latest: int):
    """(state, meta, step): the newest checkpoint, from ``latest`` down, that restores on every
    process. A checkpoint that fails (truncated files, a corrupt array) is skipped with a
    warning naming it and the error, and moved to ``WORKDIR/checkpoints_unrestorable/`` (kept
    for inspection; the run then writes that step again); all processes move to the same older
    step."""
    steps = sorted((s for s in self.manager.all_steps() if s <= latest), reverse=True)
    failures, failed_steps = [], []
    for step in steps:
      try:
        state, meta = self.restore(step, abstract_state)
        ok = True
      except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
        state, meta, ok = None, None, False
        failures.append(f"step {step}: {type(e).__name__}: {e}")
        logging.warning("Checkpoint %s/%d does not restore (%s: %s); trying the previous one.",
                        self.directory, step, type(e).__name__, e)
      if all(distributed.all_processes(int(ok))):
        if failures:
          logging.warning("Resuming from step %d, not %d: %d newer checkpoint(s) failed to "
                          "restore.", step, latest, len(failures))
          self._set_aside(failed_steps)
        return state, meta, step
      failed_steps.append(step)
    raise NoRestorableCheckpointError(
        f"no checkpoint of {self.directory} restores: " + "; ".join(failures))

  def _set_aside(self, steps):
    aside = self.directory.parent / UNRESTORABLE_DIR
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / f"{step}-{int(time.time())}"
        (self.directory / str(step)).rename(target)
        logging.warning("Moved the unrestorable checkpoint %d to %s.", step, target)
    distributed.barrier("resunet_jax.set_aside")
    self.manager.reload()

  def wait_until_finished(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)):
    return np.asarray(value).tolist()
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)
  return value


class PreemptionGuard:
  """While active (single-process runs), SIGTERM sets ``requested`` instead of killing the process
  (the loop then saves and stops). A second SIGTERM falls through to the previous handler.

  Not used with several processes: there JAX's coordination service owns SIGTERM and propagates
  the notice to every process (see the module docstring).
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = False
    self._signals = signals
    self._previous = {}

  def _handler(self, signum, frame):
    if self.requested:  # second signal: give up gracefulness
      previous = self._previous.get(signum)
      if callable(previous):
        previous(signum, frame)
      else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
      return
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False
