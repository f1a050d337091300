"""Saved models: what separation and evaluation read, in both of the layouts this library writes.

A *model directory* (what ``convert`` and ``save_model`` write)::

  model.json    the model description (``models.describe``): {"format": "resunet_jax.model/1",
                "arch", "model": {Separator fields}, "sources", "sample_rate", "metadata"}
  variables/    an Orbax PyTree checkpoint of {"params", "batch_stats"[, "constants"]}

written into a temporary sibling directory and renamed into place (a crash never leaves a
half-written model directory; an existing one is replaced only when asked).

A *training work directory* (``resunet_jax.training``) holds Orbax composite checkpoints
``checkpoints/<step>/`` whose ``variables`` and ``model`` items are the same two things (the model
description saved beside the variables), plus what resuming needs. ``load_model`` reads a model
directory, a work directory (its best-validation-SDR step, else the latest) or one step directory.
This module owns both layouts; the training package writes through it, never the other way round.
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


def save_model(out_dir, model, variables, *, arch=None, sources=("vocals",), metadata=None,
               overwrite=False):
  """Writes a model directory atomically. Returns its absolute path."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; refusing to overwrite it (pass overwrite=True / "
                          "--force to replace it)")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = fileutil.temp_dir(parent, prefix="." + os.path.basename(out_dir) + ".tmp-")
  try:
    variables = jax.tree_util.tree_map(np.asarray, dict(variables))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, VARIABLES_DIR), variables)
    checkpointer.wait_until_finished()
    checkpointer.close()
    _atomic_json(os.path.join(tmp, MODEL_JSON),
                 models.describe(model, arch=arch, sources=sources, metadata=metadata))
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
  return os.path.isfile(os.path.join(path, MODEL_JSON))


def is_step_dir(path):
  return all(os.path.isdir(os.path.join(path, item)) for item in ("variables", "meta"))


def is_workdir(path):
  return os.path.isdir(os.path.join(path, CHECKPOINT_DIR))


def is_loadable(path):
  """A model directory, a training work directory or one of its checkpoint step directories."""
  path = os.path.abspath(os.path.expanduser(path))
  return is_model_dir(path) or is_step_dir(path) or is_workdir(path)


def read_description(path):
  with open(os.path.join(path, MODEL_JSON)) as f:
    return json.load(f)


def restore_item(item_dir, device=None):
  """An Orbax PyTree item (e.g. ``<step>/variables``) restored onto one device, whatever the
  topology that saved it (another device count, several processes, a TPU slice)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  quiet_orbax_logs()
  device = device or jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  checkpointer = ocp.StandardCheckpointer()
  try:
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
  manager = ocp.CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), options=options,
                                  item_names=STEP_ITEMS)
  try:
    with_metrics = [s for s in manager.all_steps() if manager.metrics(s)]
    step = manager.best_step() if with_metrics else None
    return manager.latest_step() if step is None else step
  finally:
    manager.close()


def _read_json_item(step_dir, item):
  with open(os.path.join(step_dir, item, "metadata")) as f:
    return json.load(f)


def load_model(path, **overrides):
  """(model, variables, description) from a model directory, a training work directory or one of
  its step directories.

  ``overrides`` replace Separator fields (e.g. ``dtype="bfloat16"``, ``precision="highest"``,
  ``conv_backend="cpu"``). ``variables`` is ``{"params", "batch_stats"[, "constants"]}``. For a
  training checkpoint the description's metadata also names the step and the step directory.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if is_model_dir(path):
    desc = read_description(path)
    model = models.from_description(desc, **overrides)
    return model, dict(restore_item(os.path.join(path, VARIABLES_DIR))), desc
  if is_step_dir(path):
    step_dir = path
  elif is_workdir(path):
    step = select_step(path)
    if step is None:
      raise ValueError(f"training work directory {path} has no finished checkpoint")
    step_dir = os.path.join(path, CHECKPOINT_DIR, str(step))
  else:
    raise ValueError(f"{path} is neither a model directory (no {MODEL_JSON}), a training work "
                     f"directory (no {CHECKPOINT_DIR}/) nor a checkpoint step directory (no "
                     "variables/ and meta/)")
  meta = _read_json_item(step_dir, "meta")
  if os.path.isdir(os.path.join(step_dir, "model")):
    desc = _read_json_item(step_dir, "model")
  else:  # written before the description became an item of its own
    desc = meta["model"]
  model = models.from_description(desc, **overrides)
  variables = restore_item(os.path.join(step_dir, "variables"))
  desc = dict(desc)
  desc["metadata"] = dict(desc.get("metadata") or {}, step=meta["step"], checkpoint=step_dir,
                          validation=meta.get("validation"))
  return model, dict(variables), desc
