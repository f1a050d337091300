"""Training checkpoints (Orbax) and loading a trained model from a work directory.

Layout of a work directory::

  WORKDIR/config.json                 the run's whole config (written at start)
  WORKDIR/checkpoints/<step>/         one Orbax composite checkpoint per saved step:
      variables/   {"params", "batch_stats"[, "constants"]}   (what separation needs)
      train/       {"step", "opt_state", "rng"}                (what resuming needs besides)
      meta/        JSON: step, data position, seeds, model description, validation metrics
      metrics/     JSON {"val_sdr": ...} when a validation ran at that step (best tracking)
  WORKDIR/events.out.tfevents.*       TensorBoard: metrics and validation audio (clu writers)

Saves are asynchronous (the device-to-host copy happens before ``save`` returns, the file writes in
a background thread) and atomic: Orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it when
complete, so a process killed during a save leaves the previous checkpoints intact and the
unfinished directory is ignored (and removed) on the next start. Kept: the last ``keep`` steps plus
the step with the best validation SDR.
"""
import json
import os
import signal
import threading
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from resunet_jax import checkpoint as model_checkpoint
from resunet_jax import fileutil

CHECKPOINT_DIR = model_checkpoint.CHECKPOINT_DIR
CONFIG_JSON = "config.json"
BEST_METRIC = model_checkpoint.BEST_METRIC
ITEMS = model_checkpoint.STEP_ITEMS


def _best_metric(metrics) -> float:
  value = float(metrics.get(BEST_METRIC, float("-inf")))
  return value if np.isfinite(value) else float("-inf")


class TrainCheckpoints:
  """Orbax CheckpointManager over ``WORKDIR/checkpoints`` with our items and retention policy."""

  def __init__(self, workdir: str, *, keep: int = 3, keep_best: bool = True,
               asynchronous: bool = True, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
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

  def save(self, state, meta: Dict[str, Any], metrics: Optional[Dict[str, float]] = None, *,
           model_description: Optional[Dict[str, Any]] = None) -> bool:
    """Starts an asynchronous save of ``state`` at ``state.step`` (with the model description
    beside the variables); False if that step exists."""
    step = int(jax.device_get(state.step))
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
    shardings, e.g. replicated on the current mesh -- the device count may differ from the run that
    saved it)."""
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


# ------------------------------------------------------------------------------------------------
# Config file.


def write_config(workdir: str, config) -> str:
  """Writes ``config`` as JSON into ``workdir`` (atomically); returns the path."""
  path = os.path.join(workdir, CONFIG_JSON)
  with fileutil.atomic_text_file(path) as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    f.write("\n")
  return path


def read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------------
# Preemption.


class PreemptionGuard:
  """While active, SIGTERM sets ``requested`` instead of killing the process (the loop then saves
  and returns). A second SIGTERM falls through to the previous handler."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = False
    self._signals = signals
    self._previous = {}

  def _handler(self, signum, frame):
    if self.requested:  # second signal: give up gracefully-ness
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
