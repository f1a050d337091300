"""The configs a work directory was started with, and the check that a resume keeps the recipe.

Every start of a run appends its config to ``WORKDIR/config_history/start_NNNN.json`` (with the
time, the number of processes and devices, and the step it resumed from); ``WORKDIR/config.json``
is the first start's config and is never rewritten. A resume whose config changes the recipe --
the global batch, the optimiser, the schedule, the model, the loss, the seed, the number of
replicas or how training data is made -- stops with the list of differences unless the user accepts them
(``--accept_config_changes``). Logging, checkpointing, validation and data locations may change
freely (``num_train_steps`` too: extending a run is normal).
"""
import datetime
import json
from typing import Dict, List, Optional, Tuple

from resunet_jax import fileutil

CONFIG_JSON = "config.json"
HISTORY_DIR = "config_history"

# Keys (or key prefixes) of the recipe: what a resumed run must keep.
RECIPE_KEYS = ("seed", "replicas", "global_batch_size", "loss", "optimizer.", "schedule.", "model.",
               "data.name", "data.variant", "data.train_split", "data.sample_rate",
               "data.segment_seconds", "data.start_hop_seconds", "data.input_sources",
               "data.target_sources", "data.augment.")
# Model keys that choose how the same function is computed, not what it computes (runtime
# choices; tests/test_layout.py checks the outputs and gradients equal): a run may resume under
# another choice, e.g. on another platform, or from before the option existed.
NOT_RECIPE = ("model.conv_backend", "model.layout", "model.remat")
# Recipe keys added after runs existed, and the value a config without them had.
RECIPE_DEFAULTS = {"replicas": 1}


class ConfigChangedError(ValueError):
  """A resume with a config that changes the training recipe."""


def flatten(tree: dict, prefix: str = "") -> Dict[str, object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _is_recipe(key: str) -> bool:
  if key in NOT_RECIPE:
    return False
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RECIPE_KEYS)


def recipe_changes(old: dict, new: dict) -> List[Tuple[str, object, object]]:
  """(key, old value, new value) for every recipe key that differs (JSON form of both configs)."""
  a, b = dict(RECIPE_DEFAULTS, **flatten(old)), dict(RECIPE_DEFAULTS, **flatten(new))
  keys = sorted(k for k in set(a) | set(b) if _is_recipe(k))
  return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in keys if a.get(k) != b.get(k)]


def _history_dir(workdir):
  return fileutil.as_path(workdir) / HISTORY_DIR


def starts(workdir) -> List[dict]:
  """The recorded starts of a run, oldest first."""
  folder = _history_dir(workdir)
  if not folder.exists():
    return []
  records = []
  for path in sorted(folder.glob("start_*.json")):
    records.append(json.loads(path.read_text()))
  return records


def last_config(workdir) -> Optional[dict]:
  """The config of the most recent start (JSON form), else ``config.json``'s, else None."""
  records = starts(workdir)
  if records:
    return records[-1]["config"]
  first = fileutil.as_path(workdir) / CONFIG_JSON
  return json.loads(first.read_text()) if first.exists() else None


def check_resume(workdir, config_json: dict, accept: bool, log=None) -> None:
  """Raises ConfigChangedError (or, with ``accept``, logs) when the recipe changed."""
  old = last_config(workdir)
  if old is None:
    return
  changes = recipe_changes(old, config_json)
  if not changes:
    return
  listing = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in changes)
  if accept:
    if log is not None:
      log(f"Resuming with a changed recipe (accepted):\n{listing}")
    return
  raise ConfigChangedError(
      f"the config changes the training recipe of the run in {workdir} ({len(changes)} "
      f"difference(s)):\n{listing}\nStart a new work directory, restore the old values, or pass "
      "--accept_config_changes to resume with these changes.")


def record_start(workdir, config_json: dict, *, processes: int, devices: int,
                 resumed_from: Optional[int]) -> str:
  """Appends this start to the history (process 0 only); writes config.json on the first start.
  Returns the record's location."""
  root = fileutil.as_path(workdir)
  first = root / CONFIG_JSON
  text = json.dumps(config_json, indent=2, sort_keys=True) + "\n"
  if not first.exists():
    fileutil.write_text_atomic(first, text)
  index = len(starts(workdir))
  record = {"start": index, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "processes": processes, "devices": devices, "resumed_from_step": resumed_from,
            "config": config_json}
  path = _history_dir(workdir) / f"start_{index:04d}.json"
  fileutil.write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
  return str(path)
