"""Which evaluation folder a path given to ``resunet-compare`` stands for, and the runs' names.

A run is one of

* an evaluation folder written by ``eval.py`` (``<eval_dir>/<method>/<protocol>/<split>/*.json``,
  see ``resunet_jax.evaluation``);
* a training work directory: its evaluations live in ``<workdir>/eval/step_<n>/<split>``; the
  newest evaluated step (largest n) is used unless ``step`` names one. Its TensorBoard scalars
  (clu's event files in the work directory) give learning curves;
* a model directory with ``<checkpoint>/eval/<split>``.

The split of a folder is read from its contents (``eval.py --eval_dir`` may name the folder
anything), else from its settings.json.
"""
import dataclasses
import glob
import json
import os
import re
from typing import List, Optional

from resunet_jax import evaluation

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CompareError(ValueError):
  """Runs that cannot be compared (the message names the runs and paths)."""


@dataclasses.dataclass
class Run:
  """One evaluated run, resolved from a path given by the user."""
  path: str  # as given
  label: str
  eval_dir: str  # the evaluation folder read
  split: str
  workdir: Optional[str] = None  # training work directory (learning curves), if any
  step: Optional[int] = None  # evaluated step of a work directory
  steps_available: List[int] = dataclasses.field(default_factory=list)
  tracks: List[str] = dataclasses.field(default_factory=list)  # all tracks scored
  step_note: str = ""

  def describe(self) -> str:
    where = self.eval_dir if self.eval_dir == os.path.abspath(self.path) else (
        f"{self.path} -> {self.eval_dir}")
    return where + (f" ({self.step_note})" if self.step_note else "")




# ------------------------------------------------------------------------------------------------
# Finding the evaluations.


def _listdir(path):
  try:
    return sorted(os.listdir(path))
  except OSError:
    return []


def methods_of(eval_dir):
  return [m for m in _listdir(eval_dir) if (m == "model" or m.startswith("oracle_"))
          and any(os.path.isdir(os.path.join(eval_dir, m, p)) for p in evaluation.PROTOCOLS)]


def is_eval_dir(path) -> bool:
  """An ``eval.py`` output folder (settings.json, or <method>/<protocol>/ folders)."""
  return os.path.isfile(os.path.join(path, "settings.json")) or bool(methods_of(path))


def _splits(eval_dir, method, protocol):
  return [s for s in _listdir(os.path.join(eval_dir, method, protocol))
          if os.path.isdir(os.path.join(eval_dir, method, protocol, s))]


def _eval_splits(eval_dir):
  """Splits an eval dir holds (from its folders, else from settings.json)."""
  found = {s for m in methods_of(eval_dir) for p in evaluation.PROTOCOLS
           for s in _splits(eval_dir, m, p)}
  if not found:
    try:
      with open(os.path.join(eval_dir, "settings.json")) as f:
        found = {json.load(f)["common"]["tracks"]["split"]}
    except (OSError, KeyError, TypeError, ValueError):
      pass
  return sorted(found)


def _pick_split(splits, split, what):
  if split is not None:
    return split if split in splits else None
  if len(splits) == 1:
    return splits[0]
  if "test" in splits:
    return "test"
  if splits:
    raise CompareError(f"{what} holds evaluations of several splits ({', '.join(splits)}); "
                       "choose one with --split")
  return None


def _pick_folder(parent, split, what):
  """(folder, split) of an evaluation under ``parent`` (``eval/step_<n>/`` or ``eval/``).

  The split is read from each folder's contents, not from its name (``eval.py --eval_dir`` may
  name the folder anything); None when no folder holds the requested split."""
  held = {name: _eval_splits(os.path.join(parent, name)) for name in _listdir(parent)
          if is_eval_dir(os.path.join(parent, name))}
  if split is not None:
    names = [n for n, splits in held.items() if split in splits]
  else:
    names = list(held)
  if not names:
    return None, None
  if len(names) > 1:  # several folders: the one named after the split, else ask
    wanted = split if split is not None else "test"
    named = [n for n in names if n == wanted]
    if not named:
      raise CompareError(f"{what} holds several evaluations ({', '.join(sorted(names))}); "
                         "choose one with --split, or give the evaluation folder itself")
    names = named
  name = names[0]
  chosen = _pick_split(held[name], split, f"{what} {name}")
  return os.path.join(parent, name), chosen or split or name


def _folder_splits(parent):
  return sorted({s for name in _listdir(parent) if is_eval_dir(os.path.join(parent, name))
                 for s in _eval_splits(os.path.join(parent, name))})


def _steps(eval_root):
  return sorted(int(m.group(1)) for m in map(_STEP_DIR.match, _listdir(eval_root)) if m)


def _has_events(path):
  return bool(glob.glob(os.path.join(path, "events.out.tfevents.*")))


def _is_workdir(path):
  return (os.path.isdir(os.path.join(path, "checkpoints")) or _has_events(path)
          or bool(_steps(os.path.join(path, "eval"))))


def resolve_run(path, split=None, step=None) -> Run:
  """The evaluation folder a path stands for (see the module docstring)."""
  given = path
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CompareError(f"{given}: no such directory")
  if is_eval_dir(path):
    splits = _eval_splits(path)
    chosen = _pick_split(splits, split, given)
    if chosen is None and split is not None and splits:
      raise CompareError(f"{given}: no evaluation of split {split!r} (it has: "
                         f"{', '.join(splits)})")
    run = Run(given, "", path, chosen or split or "?")
    # <workdir>/eval/step_<n>/<split>: the work directory gives the learning curves.
    parent = os.path.dirname(path)
    m = _STEP_DIR.match(os.path.basename(parent))
    if m and os.path.basename(os.path.dirname(parent)) == "eval":
      root = os.path.dirname(os.path.dirname(parent))
      if _is_workdir(root):
        run.workdir, run.step = root, int(m.group(1))
        run.steps_available = _steps(os.path.join(root, "eval"))
        run.step_note = f"work directory {root}, step {run.step}"
    return run
  eval_root = os.path.join(path, "eval")
  steps = _steps(eval_root)
  if steps or _is_workdir(path):
    if not steps:
      raise CompareError(
          f"{given}: a training work directory without evaluations (no eval/step_<n>/<split>); "
          f"run `python eval.py --workdir={given} --config=...` first")
    candidates = [s for s in steps
                  if split is None or split in _folder_splits(os.path.join(eval_root, f"step_{s}"))]
    if step is not None:
      if step not in steps:
        raise CompareError(f"{given}: no evaluation of step {step} (evaluated steps: "
                           f"{', '.join(map(str, steps))})")
      chosen_step = step
    elif not candidates:
      raise CompareError(f"{given}: no evaluation of split {split!r} in eval/step_<n>/ "
                         f"(evaluated steps: {', '.join(map(str, steps))})")
    else:
      chosen_step = candidates[-1]
    step_dir = os.path.join(eval_root, f"step_{chosen_step}")
    folder, chosen = _pick_folder(step_dir, split, f"{given} step {chosen_step}")
    if folder is None:
      raise CompareError(f"{given}: step {chosen_step} has no evaluation of split {split!r} "
                         f"(it has: {', '.join(_folder_splits(step_dir)) or 'none'})")
    note = (f"step {chosen_step}" + (" as requested" if step is not None else
                                      f", the newest evaluated of {len(steps)}"
                                      if len(steps) > 1 else ", the only one evaluated"))
    return Run(given, "", folder, chosen, workdir=path,
               step=chosen_step, steps_available=steps, step_note=note)
  splits = _folder_splits(eval_root)
  if splits:  # a model directory: <checkpoint>/eval/<split>
    folder, chosen = _pick_folder(eval_root, split, given)
    if folder is None:
      raise CompareError(f"{given}: no evaluation of split {split!r} in eval/ (it has: "
                         f"{', '.join(splits)})")
    return Run(given, "", folder, chosen)
  raise CompareError(
      f"{given}: neither an evaluation folder (eval.py --eval_dir: <method>/<protocol>/<split>/"
      "*.json, settings.json) nor a training work directory (eval/step_<n>/<split>) nor a model "
      "directory with eval/<split>")


def _default_label(run: Run) -> str:
  if run.workdir:
    return os.path.basename(run.workdir.rstrip(os.sep))
  parts = run.eval_dir.rstrip(os.sep).split(os.sep)
  if len(parts) >= 3 and parts[-2] == "eval":  # <checkpoint>/eval/<split>
    return parts[-3]
  return parts[-1]


def assign_labels(runs, labels):
  if labels is not None:
    labels = list(labels)
    if len(labels) != len(runs):
      raise CompareError(f"{len(labels)} labels for {len(runs)} runs")
    if len(set(labels)) != len(labels):
      raise CompareError(f"labels must differ: {labels}")
    for r, lab in zip(runs, labels):
      r.label = lab
    return
  names = [_default_label(r) for r in runs]
  for i, r in enumerate(runs):
    if names.count(names[i]) > 1 and r.step is not None:
      names[i] = f"{names[i]}@{r.step}"
  for i, r in enumerate(runs):
    r.label = names[i] if names.count(names[i]) == 1 else f"{names[i]}#{i + 1}"


def track_names(folder):
  return sorted(f[:-len(".json")] for f in _listdir(folder) if f.endswith(".json"))


def data_settings(eval_dir):
  try:
    with open(os.path.join(eval_dir, "settings.json")) as f:
      common = json.load(f)["common"]
  except (OSError, KeyError, TypeError, ValueError):
    return None
  tracks = common.get("tracks") or {}
  return {"dataset": tracks.get("dataset"), "variant": tracks.get("variant"),
          "window_seconds": common.get("window_seconds")}

