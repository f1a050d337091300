"""Saved models: what separation and evaluation read, in both of the layouts this library writes.

A *model directory* (what ``convert`` and ``save_model`` write)::

  model.json    the model description (``models.describe``): {"format": "resunet_jax.model/1",
                "arch", "model": {Separator fields}, "sources", "sample_rate", "metadata"}
  variables/    an Orbax PyTree checkpoint of {"params", "batch_stats"[, "constants"]}

A local one is written into a temporary sibling directory and renamed into place (a crash never
leaves a half-written model directory; an existing one is replaced only when asked). On an object
store (``gs://bucket/models/vocals``) a directory rename is not atomic, so there ``model.json`` is
the commit marker: ``variables/`` is written first (Orbax finalises it with its own marker), then
``model.json``, and a folder without ``model.json`` is never read as a model directory.

A *training work directory* (``resunet_jax.training``) holds Orbax composite checkpoints
``checkpoints/<step>/`` whose ``variables`` and ``model`` items are the same two things (the model
description saved beside the variables), plus what resuming needs. ``load_model`` reads a model
directory, a work directory (its best-validation-SDR step, else the latest) or one step directory;
a replicated run's checkpoint (``config.replicas`` > 1: every array has a leading replica axis)
gives one replica's model (``replica=k``).
This module owns both layouts; the training package writes through it, never the other way round.
Every location may be a local path or a gs:// URL (``fileutil.check_location`` refuses the others).
"""
import json
import logging as py_logging
import os
import shutil

import jax
import numpy as np

from resunet_jax import fileutil
from resunet_jax import models

MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"
# Training work directories.
CHECKPOINT_DIR = "checkpoints"
STEP_ITEMS = ("variables", "model", "train", "meta")  # Orbax item names of a step directory
BEST_METRIC = "val_sdr"


class _QuietOrbax(py_logging.Filter):
  """Drops three Orbax messages that our use triggers deliberately: the warning on a save without
  metrics while best-checkpoint tracking is on (validation runs less often than saves), the
  read-only-directory notice of read-only managers, and the missing ``_CHECKPOINT_METADATA`` of an
  item read on its own (``restore_item``; that file sits in the step directory). Orbax's other
  logging is untouched."""

  def filter(self, record):
    message = record.getMessage()
    return not any(m in message for m in ("did not provide metrics",
                                          "Given directory is read only",
                                          "_CHECKPOINT_METADATA"))


_QUIET = _QuietOrbax()


def quiet_orbax_logs():
  absl_logger = py_logging.getLogger("absl")
  if _QUIET not in absl_logger.filters:
    absl_logger.addFilter(_QUIET)


def _atomic_json(path, obj):
  with fileutil.atomic_text_file(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def _save_variables(directory, variables):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(directory, jax.tree_util.tree_map(np.asarray, dict(variables)))
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()


def save_model(out_dir, model, variables, *, arch=None, sources=("vocals",), metadata=None,
               overwrite=False):
  """Writes a model directory (a local path or a gs:// URL); returns its absolute path or URL.

  Readers never see a half-written one. Locally it is written into a temporary sibling and
  renamed into place. On an object store (no atomic directory rename) ``variables/`` is written
  first and ``model.json`` last, as the commit marker (``is_model_dir`` and ``load_model`` need
  it); replacing one (``overwrite``) deletes its ``model.json`` first, then the rest, so that
  meanwhile a reader finds no model rather than a mix of the old and the new (a reader that had
  read the old ``model.json`` before then fails to read the variables).
  """
  fileutil.check_location(out_dir, "model directory")
  path = fileutil.as_path(out_dir)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; refusing to overwrite it (pass overwrite=True / "
                          "--force to replace it)")
  description = models.describe(model, arch=arch, sources=sources, metadata=metadata)
  if fileutil.is_url(path):
    if path.exists():
      (path / MODEL_JSON).unlink(missing_ok=True)  # first: from now on no reader takes it
      path.rmtree()
    _save_variables(path / VARIABLES_DIR, variables)
    fileutil.write_text_atomic(path / MODEL_JSON,
                               json.dumps(description, indent=2, sort_keys=True) + "\n")
    return str(path)
  out_dir = os.fspath(path)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = fileutil.temp_dir(parent, prefix="." + os.path.basename(out_dir) + ".tmp-")
  try:
    _save_variables(os.path.join(tmp, VARIABLES_DIR), variables)
    _atomic_json(os.path.join(tmp, MODEL_JSON), description)
    if os.path.exists(out_dir):
      old = out_dir + ".old-" + os.path.basename(tmp)
      os.replace(out_dir, old)
      os.replace(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def is_model_dir(path):
  return (fileutil.as_path(path) / MODEL_JSON).is_file()


def is_step_dir(path):
  return all((fileutil.as_path(path) / item).is_dir() for item in ("variables", "meta"))


def is_workdir(path):
  return (fileutil.as_path(path) / CHECKPOINT_DIR).is_dir()


def is_loadable(path):
  """A model directory, a training work directory or one of its checkpoint step directories
  (local paths or URLs)."""
  return is_model_dir(path) or is_step_dir(path) or is_workdir(path)


def read_description(path):
  return json.loads((fileutil.as_path(path) / MODEL_JSON).read_text())


def restore_item(item_dir, device=None):
  """An Orbax PyTree item (e.g. ``<step>/variables``) restored onto one device, whatever the
  topology that saved it (another device count, several processes, a TPU slice)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  quiet_orbax_logs()
  device = device or jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  checkpointer = ocp.StandardCheckpointer()
  try:
    item_dir = fileutil.as_path(item_dir)
    metadata = checkpointer.metadata(item_dir).item_metadata
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), metadata)
    return checkpointer.restore(item_dir, abstract)
  finally:
    checkpointer.close()


def _best_metric(metrics) -> float:
  value = float(metrics.get(BEST_METRIC, float("-inf")))
  return value if np.isfinite(value) else float("-inf")


def select_step(workdir):
  """The step a work directory's model is read from: the best validation SDR, else the latest."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  quiet_orbax_logs()
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, best_fn=_best_metric,
                                         best_mode="max")
  manager = ocp.CheckpointManager(fileutil.as_path(workdir) / CHECKPOINT_DIR, options=options,
                                  item_names=STEP_ITEMS)
  try:
    with_metrics = [s for s in manager.all_steps() if manager.metrics(s)]
    step = manager.best_step() if with_metrics else None
    return manager.latest_step() if step is None else step
  finally:
    manager.close()


def _read_json_item(step_dir, item):
  return json.loads((fileutil.as_path(step_dir) / item / "metadata").read_text())


def read_step_meta(step_dir) -> dict:
  """The ``meta`` item of a training checkpoint step directory (step, seed, data position,
  validation; ``replicas`` and ``seeds`` for a replicated run)."""
  return _read_json_item(step_dir, "meta")


def step_replicas(meta) -> int:
  """The number of replicas a checkpoint's ``meta`` says its arrays hold (1: one run)."""
  return int(meta.get("replicas", 1) or 1)


def _step_dir(path):
  """The step directory ``load_model`` reads for a work directory or step directory."""
  if is_step_dir(path):
    return path
  step = select_step(path)
  if step is None:
    raise ValueError(f"training work directory {path} has no finished checkpoint")
  return path / CHECKPOINT_DIR / str(step)


def replica_count(path) -> int:
  """How many replicas (independent runs, ``config.replicas``) the checkpoint ``load_model``
  would read from ``path`` holds: 1 for a model directory or a one-run work directory."""
  fileutil.check_location(path, "checkpoint")
  path = fileutil.as_path(path)
  if is_model_dir(path) or not (is_step_dir(path) or is_workdir(path)):
    return 1
  return step_replicas(read_step_meta(_step_dir(path)))


def load_model(path, replica=None, **overrides):
  """(model, variables, description) from a model directory, a training work directory or one of
  its step directories.

  ``overrides`` replace Separator fields (e.g. ``dtype="bfloat16"``, ``precision="highest"``,
  ``conv_backend="cpu"``). ``variables`` is ``{"params", "batch_stats"[, "constants"]}``. For a
  training checkpoint the description's metadata also names the step and the step directory.

  A work directory of a replicated run (``config.replicas`` = R > 1) holds R models: ``replica``
  = k (0 <= k < R) picks replica k's variables (its own validation, ``seed`` = the run's seed +
  k and ``replica`` = k in the metadata, so a model directory saved from them records where
  they came from); without it, or out of that range, a ValueError names the valid range. The
  step of a work directory is the best mean validation SDR over replicas (else the latest).
  """
  fileutil.check_location(path, "checkpoint")
  path = fileutil.as_path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if replica is not None:
    replica = int(replica)
  if is_model_dir(path):
    if replica is not None:
      raise ValueError(f"replica={replica}: {path} is a model directory (one model); replicas "
                       "are chosen in training work directories of replicated runs")
    desc = read_description(path)
    model = models.from_description(desc, **overrides)
    return model, dict(restore_item(path / VARIABLES_DIR)), desc
  if not (is_step_dir(path) or is_workdir(path)):
    raise ValueError(f"{path} is neither a model directory (no {MODEL_JSON}), a training work "
                     f"directory (no {CHECKPOINT_DIR}/) nor a checkpoint step directory (no "
                     "variables/ and meta/)")
  step_dir = _step_dir(path)
  meta = read_step_meta(step_dir)
  replicas = step_replicas(meta)
  if replicas > 1 and replica is None:
    raise ValueError(f"{path} holds {replicas} replicas (independent runs, seeds "
                     f"{meta.get('seeds')}): choose one with replica=k (--replica=k), "
                     f"0 <= k <= {replicas - 1}")
  if replica is not None and not 0 <= replica < replicas:
    raise ValueError(f"replica={replica} is out of range: {path} holds {replicas} replica(s), "
                     f"valid: 0..{replicas - 1}")
  if (step_dir / "model").is_dir():
    desc = _read_json_item(step_dir, "model")
  else:  # written before the description became an item of its own
    desc = meta["model"]
  model = models.from_description(desc, **overrides)
  variables = restore_item(step_dir / "variables")
  desc = dict(desc)
  metadata = dict(desc.get("metadata") or {}, step=meta["step"], checkpoint=str(step_dir),
                  validation=meta.get("validation"))
  if replicas > 1:
    variables = jax.tree_util.tree_map(lambda x: x[replica], variables)
    metadata.pop("seeds", None)
    per_replica = meta.get("replica_validation")
    metadata.update(replicas=replicas, replica=replica, seed=int(meta["seed"]) + replica,
                    validation=per_replica[replica] if per_replica else None)
  desc["metadata"] = metadata
  return model, dict(variables), desc
