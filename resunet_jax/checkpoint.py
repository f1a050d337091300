"""Model checkpoints: a separator's variables (Orbax) plus the description needed to rebuild it.

A *model directory* (what ``convert`` writes and what separation and evaluation read) holds

  model.json    {"format": "resunet_jax.model/1", "arch": ..., "model": {Separator fields},
                 "sources": [...], "sample_rate": 44100, "metadata": {...}}
  variables/    an Orbax PyTree checkpoint of {"params", "batch_stats"[, "constants"]}

It is written into a temporary sibling directory and renamed into place, so a crash never leaves
a half-written model directory, and an existing directory is never overwritten unless asked.

``load_model`` also accepts a training work directory or one of its step directories; that part is
delegated to ``resunet_jax.training.checkpointing``.
"""
import json
import os
import shutil

import jax
import numpy as np

from resunet_jax import fileutil

FORMAT = "resunet_jax.model/1"
MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"


def _jsonable(value):
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  # dtypes and the like
  return str(np.dtype(value)) if _is_dtype(value) else str(value)


def _is_dtype(value):
  try:
    np.dtype(value)
    return True
  except TypeError:
    return False


def model_description(model, arch=None, sources=("vocals",), metadata=None):
  """The JSON-able description stored next to a model's variables."""
  from resunet_jax import models  # pylint: disable=g-import-not-at-top
  fields = {}
  for name in models.Separator.__dataclass_fields__:
    if name in ("parent", "name", "bn_axis_name"):
      continue
    fields[name] = _jsonable(getattr(model, name))
  return {"format": FORMAT, "arch": arch, "model": fields, "sources": list(sources),
          "sample_rate": 44100, "metadata": _jsonable(metadata or {})}


def model_from_description(desc, **overrides):
  """Rebuilds the ``Separator`` a description (``model.json``) describes."""
  from resunet_jax import models  # pylint: disable=g-import-not-at-top
  if desc.get("format") != FORMAT:
    raise ValueError(f"model description has format {desc.get('format')!r}, expected {FORMAT!r}")
  fields = dict(desc["model"])
  for key in ("channels",):
    fields[key] = tuple(fields[key])
  fields["pools"] = tuple(tuple(p) for p in fields["pools"])
  for key in ("dtype", "param_dtype"):
    if fields.get(key) is not None:
      fields[key] = np.dtype(fields[key]) if fields[key] != "bfloat16" else "bfloat16"
  if fields.get("precision") == "None":
    fields["precision"] = None
  fields.update(overrides)
  unknown = sorted(set(fields) - set(models.Separator.__dataclass_fields__))
  if unknown:
    raise ValueError(f"model description has unknown field(s) {unknown}")
  return models.Separator(**fields)


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
                 model_description(model, arch=arch, sources=sources, metadata=metadata))
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


def read_description(path):
  with open(os.path.join(path, MODEL_JSON)) as f:
    return json.load(f)


def load_model(path, **overrides):
  """(model, variables, description) from a model directory or a training work directory.

  ``overrides`` replace Separator fields (e.g. ``dtype="bfloat16"``, ``precision="highest"``).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if not is_model_dir(path):
    try:
      from resunet_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(f"{path} is not a model directory (no {MODEL_JSON})") from e
    return checkpointing.load_model_from_workdir(path, **overrides)
  desc = read_description(path)
  model = model_from_description(desc, **overrides)
  checkpointer = ocp.StandardCheckpointer()
  variables = checkpointer.restore(os.path.join(path, VARIABLES_DIR))
  checkpointer.close()
  return model, variables, desc
