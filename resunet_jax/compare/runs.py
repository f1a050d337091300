"""Which evaluation folders a run given to ``resunet-compare`` stands for, its seeds, its name.

A run is one of

* an evaluation folder written by ``eval.py`` (``<eval_dir>/<method>/<protocol>/<split>/*.json``,
  see ``resunet_jax.evaluation``);
* a training work directory: its evaluations live in ``<workdir>/eval/step_<n>/<split>``; the
  newest evaluated step (largest n) is used unless ``step`` names one. Its TensorBoard scalars
  (clu's event files in the work directory) give learning curves;
* a model directory with ``<checkpoint>/eval/<split>``.

The split of a folder is read from its contents (``eval.py --eval_dir`` may name the folder
anything), else from its settings.json.

Seeds. A run has one or more seeds (independently trained replicas of one configuration), each with
its own evaluation folder (``Seed``):

* a replicated training run (``config.replicas = R``) keeps replica k's evaluation in
  ``<workdir>/eval/step_<n>/replica_<k>/<split>/`` (what an unreplicated run has in
  ``<workdir>/eval/step_<n>/<split>/``), and an ``eval.py --replica=all`` output folder D holds
  ``D/replica_<k>/``, each what D would be for one run. A folder with ``replica_<k>`` subfolders
  (a work directory's step folder, an eval.py output folder, a model directory's ``eval/``) is read
  as one run whose seeds are the replicas found there; they must be evaluations of one split (and,
  ``comparison`` checks, of the same tracks);
* seeds trained as separate runs are grouped explicitly: ``resolve_group(paths, ...)``
  (``resunet-compare --group NAME=PATH,PATH,...``); each member is resolved as above and its seeds
  (one, or its replicas) become the group's.

An unreplicated run has one seed, named "", and is compared exactly as before seeds existed.
"""
import dataclasses
import glob
import json
import os
import re
from typing import List, Optional, Sequence, Tuple

from resunet_jax import evaluation

_STEP_DIR = re.compile(r"^step_(\d+)$")
_REPLICA_DIR = re.compile(r"^replica_(\d+)$")


class CompareError(ValueError):
  """Runs that cannot be compared (the message names the runs and paths)."""


@dataclasses.dataclass
class Seed:
  """One seed of a run: its evaluation folder and where it comes from."""
  name: str  # "" (a run's only seed), "replica_<k>", or a group member's label[/replica_<k>]
  eval_dir: str
  workdir: Optional[str] = None  # its training work directory, if known (learning curves)
  step: Optional[int] = None  # the evaluated step of that work directory
  tracks: List[str] = dataclasses.field(default_factory=list)  # all tracks scored


@dataclasses.dataclass
class Run:
  """One evaluated run, resolved from a path (a group: from several paths) given by the user.

  ``eval_dir`` is the evaluation folder of a one-seed run; with several seeds, the folder that
  holds their ``replica_<k>`` folders (a group: its first member's); every seed's own folder is in
  ``seeds``."""
  path: str  # as given (a group: its members' paths joined by ",")
  label: str
  eval_dir: str
  split: str
  workdir: Optional[str] = None  # training work directory (learning curves), if any
  step: Optional[int] = None  # evaluated step of a work directory
  steps_available: List[int] = dataclasses.field(default_factory=list)
  tracks: List[str] = dataclasses.field(default_factory=list)  # all tracks scored
  step_note: str = ""
  seeds: List[Seed] = dataclasses.field(default_factory=list)
  members: List[str] = dataclasses.field(default_factory=list)  # a group's paths, as given

  def __post_init__(self):
    if not self.seeds:
      self.seeds = [Seed("", self.eval_dir, self.workdir, self.step)]

  @property
  def num_seeds(self) -> int:
    return len(self.seeds)

  def describe(self) -> str:
    if self.members:
      where = "group of " + ", ".join(self.members)
    else:
      where = self.eval_dir if self.eval_dir == os.path.abspath(self.path) else (
          f"{self.path} -> {self.eval_dir}")
    notes = [self.step_note] if self.step_note else []
    if len(self.seeds) > 1:
      notes.append(f"{len(self.seeds)} seeds: " + ", ".join(s.name for s in self.seeds))
    return where + (f" ({'; '.join(notes)})" if notes else "")


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


# ------------------------------------------------------------------------------------------------
# Replicas: the seeds of one run.


def replica_dirs(path) -> List[Tuple[str, str]]:
  """[(name, folder)] of the ``replica_<k>`` folders in ``path``, by k."""
  found = []
  for name in _listdir(path):
    m = _REPLICA_DIR.match(name)
    if m and os.path.isdir(os.path.join(path, name)):
      found.append((int(m.group(1)), name))
  return [(name, os.path.join(path, name)) for _, name in sorted(found)]


def _holds_replicas(path) -> bool:
  """``path`` holds replica folders with evaluations: ``replica_<k>/`` an evaluation folder
  (eval.py --replica=all), or holding them (``replica_<k>/<split>/``, a work directory's step)."""
  return any(is_eval_dir(folder) or _folder_splits(folder) for _, folder in replica_dirs(path))


def _splits_under(parent):
  """The splits evaluated under ``parent`` (a step folder or a model's eval/), replicas included."""
  if _holds_replicas(parent):
    return sorted({s for _, folder in replica_dirs(parent)
                   for s in (_eval_splits(folder) if is_eval_dir(folder)
                             else _folder_splits(folder))})
  return _folder_splits(parent)


def _replica_seeds(parent, split, what):
  """(seeds, split) of the replica folders in ``parent``; ([], None) when it has none."""
  seeds, chosen_splits, folder_names = [], {}, {}
  for name, folder in replica_dirs(parent):
    if is_eval_dir(folder):
      splits = _eval_splits(folder)
      eval_dir, chosen = folder, _pick_split(splits, split, f"{what} {name}")
    else:
      splits = _folder_splits(folder)
      if not splits:
        continue  # an empty or unrelated folder
      eval_dir, chosen = _pick_folder(folder, split, f"{what} {name}")
      if eval_dir is not None:
        folder_names[name] = os.path.basename(eval_dir)
    if eval_dir is None or chosen is None:
      wanted = split if split is not None else "test"
      raise CompareError(f"{what}: {name} has no evaluation of split {wanted!r} (it has: "
                         f"{', '.join(splits) or 'none'}); every replica of a run is compared "
                         "on the same split")
    chosen_splits[name] = chosen
    seeds.append(Seed(name, eval_dir))
  if not seeds:
    return [], None
  if len(set(chosen_splits.values())) > 1:
    raise CompareError(f"{what}: its replicas hold evaluations of different splits (" + "; ".join(
        f"{n}: {s}" for n, s in chosen_splits.items()) + "); choose one with --split")
  if len(set(folder_names.values())) > 1:
    raise CompareError(f"{what}: its replicas' evaluations are in differently named folders ("
                       + ", ".join(f"{n}/{f}" for n, f in folder_names.items())
                       + "); give --split, or compare the replica folders as a --group")
  return seeds, next(iter(chosen_splits.values()))


def _configured_replicas(workdir) -> Optional[int]:
  """``replicas`` in a work directory's config.json (a replicated training run), else None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      value = json.load(f).get("replicas")
  except (OSError, ValueError, AttributeError):
    return None
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def missing_replicas(run: Run) -> str:
  """A note when the work directory's config.json names more replicas than were evaluated."""
  expected = _configured_replicas(run.workdir) if run.workdir else None
  found = [s.name for s in run.seeds]
  if expected is None or expected <= 1 or not any(found):
    return ""
  missing = [f"replica_{k}" for k in range(expected) if f"replica_{k}" not in found]
  if not missing:
    return ""
  return (f"{run.workdir}: config.json has replicas = {expected}, but only {len(found)} were "
          f"evaluated at step {run.step} (missing: {', '.join(missing)}); comparing those "
          f"{len(found)} seeds")


def _workdir_above(folder):
  """(work directory, step) when ``folder`` is ``<workdir>/eval/step_<n>`` or an evaluation in it
  (``step_<n>/<split>``, ``step_<n>/replica_<k>``, ``step_<n>/replica_<k>/<split>``), else
  (None, None)."""
  parts = os.path.normpath(folder).split(os.sep)
  for up in range(3):  # how many levels ``folder`` is below step_<n>
    if len(parts) < up + 3:
      break
    if up == 2 and not _REPLICA_DIR.match(parts[-2]):
      break
    m = _STEP_DIR.match(parts[-1 - up])
    if m and parts[-2 - up] == "eval":
      root = os.sep.join(parts[:-2 - up]) or os.sep
      if _is_workdir(root):
        return root, int(m.group(1))
  return None, None


# ------------------------------------------------------------------------------------------------
# Resolving what the user gave.


def _with_workdir(run: Run) -> Run:
  """Fills in the work directory above an evaluation folder (for the learning curves)."""
  root, step = _workdir_above(run.eval_dir)
  if root is not None:
    run.workdir, run.step = root, step
    run.steps_available = _steps(os.path.join(root, "eval"))
    run.step_note = f"work directory {root}, step {step}"
    for s in run.seeds:
      s.workdir, s.step = root, step
  return run


def resolve_run(path, split=None, step=None) -> Run:
  """The evaluation folder(s) a path stands for (see the module docstring)."""
  given = path
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CompareError(f"{given}: no such directory")
  if _holds_replicas(path):  # an eval.py --replica=all folder, or a step folder given directly
    if methods_of(path):
      raise CompareError(f"{given} holds both scores of its own and replica_<k> folders; give "
                         "the folder of one of them")
    seeds, chosen = _replica_seeds(path, split, given)
    return _with_workdir(Run(given, "", path, chosen, seeds=seeds))
  if is_eval_dir(path):
    splits = _eval_splits(path)
    chosen = _pick_split(splits, split, given)
    if chosen is None and split is not None and splits:
      raise CompareError(f"{given}: no evaluation of split {split!r} (it has: "
                         f"{', '.join(splits)})")
    # <workdir>/eval/step_<n>/[replica_<k>/]<split>: the work directory gives learning curves.
    return _with_workdir(Run(given, "", path, chosen or split or "?"))
  eval_root = os.path.join(path, "eval")
  steps = _steps(eval_root)
  if steps or _is_workdir(path):
    if not steps:
      raise CompareError(
          f"{given}: a training work directory without evaluations (no eval/step_<n>/<split>); "
          f"run `python eval.py --workdir={given} --config=...` first")
    candidates = [s for s in steps
                  if split is None or split in _splits_under(os.path.join(eval_root, f"step_{s}"))]
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
    what = f"{given} step {chosen_step}"
    note = (f"step {chosen_step}" + (" as requested" if step is not None else
                                      f", the newest evaluated of {len(steps)}"
                                      if len(steps) > 1 else ", the only one evaluated"))
    seeds, chosen = _replica_seeds(step_dir, split, what)
    if seeds:  # a replicated training run
      for s in seeds:
        s.workdir, s.step = path, chosen_step
      return Run(given, "", step_dir, chosen, workdir=path, step=chosen_step,
                 steps_available=steps, step_note=note, seeds=seeds)
    folder, chosen = _pick_folder(step_dir, split, what)
    if folder is None:
      raise CompareError(f"{given}: step {chosen_step} has no evaluation of split {split!r} "
                         f"(it has: {', '.join(_folder_splits(step_dir)) or 'none'})")
    return Run(given, "", folder, chosen, workdir=path,
               step=chosen_step, steps_available=steps, step_note=note)
  splits = _splits_under(eval_root)
  if splits:  # a model directory: <checkpoint>/eval/[replica_<k>/]<split>
    seeds, chosen = _replica_seeds(eval_root, split, given)
    if seeds:
      return Run(given, "", eval_root, chosen, seeds=seeds)
    folder, chosen = _pick_folder(eval_root, split, given)
    if folder is None:
      raise CompareError(f"{given}: no evaluation of split {split!r} in eval/ (it has: "
                         f"{', '.join(splits)})")
    return Run(given, "", folder, chosen)
  raise CompareError(
      f"{given}: neither an evaluation folder (eval.py --eval_dir: <method>/<protocol>/<split>/"
      "*.json, settings.json; or its replica_<k>/ folders) nor a training work directory "
      "(eval/step_<n>/[replica_<k>/]<split>) nor a model directory with eval/<split>")


def resolve_group(paths: Sequence[str], split=None, step=None) -> Run:
  """One run whose seeds are those of several runs (seeds trained as separate runs)."""
  paths = list(paths)
  if not paths:
    raise CompareError("a group needs at least one run")
  members = [resolve_run(p, split, step) for p in paths]
  splits = {m.split for m in members}
  if len(splits) > 1:
    raise CompareError("the runs of a group were scored on different splits: " + "; ".join(
        f"{m.path}: {m.split}" for m in members) + " (choose one with --split)")
  names = _unique([_default_label(m) for m in members], members)
  seeds = []
  for name, m in zip(names, members):
    for s in m.seeds:
      seeds.append(dataclasses.replace(s, name=name + (f"/{s.name}" if s.name else "")))
  steps = [m.step for m in members]
  note = ""
  if any(s is not None for s in steps):
    note = "steps " + ", ".join(f"{n}@{s}" for n, s in zip(names, steps) if s is not None)
  return Run(",".join(paths), "", members[0].eval_dir, members[0].split, step_note=note,
             seeds=seeds, members=paths)


def resolve(entry, split=None, step=None) -> Run:
  """A run from a path (``resolve_run``) or from a sequence of paths (``resolve_group``)."""
  if isinstance(entry, (str, os.PathLike)):
    return resolve_run(os.fspath(entry), split, step)
  return resolve_group([os.fspath(p) for p in entry], split, step)


def _default_label(run: Run) -> str:
  if run.workdir:
    return os.path.basename(run.workdir.rstrip(os.sep))
  if run.members:
    return os.path.basename(os.path.abspath(run.members[0]).rstrip(os.sep)) + "+"
  parts = run.eval_dir.rstrip(os.sep).split(os.sep)
  if len(parts) >= 2 and parts[-1] == "eval":  # <checkpoint>/eval/replica_<k>/<split>
    return parts[-2]
  if len(parts) >= 3 and parts[-2] == "eval":  # <checkpoint>/eval/<split>
    return parts[-3]
  return parts[-1]


def _unique(names, runs):
  """Names made distinct: a name shared by several runs gets the run's step (@n), then, if still
  shared, its position (#i)."""
  shared = [names.count(n) > 1 for n in names]
  names = [f"{n}@{r.step}" if dup and r.step is not None else n
           for n, r, dup in zip(names, runs, shared)]
  return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def assign_labels(runs, labels):
  """Names the runs: ``labels`` (None entries: a name from the path), else from the paths."""
  if labels is not None:
    labels = list(labels)
    if len(labels) != len(runs):
      raise CompareError(f"{len(labels)} labels for {len(runs)} runs")
    given = [lab for lab in labels if lab is not None]
    if len(set(given)) != len(given):
      raise CompareError(f"labels must differ: {given}")
    defaults = _unique([_default_label(r) for r in runs], runs)
    for i, (r, lab) in enumerate(zip(runs, labels)):
      if lab is None:
        lab = defaults[i]
        if lab in given:
          lab = f"{lab}#{i + 1}"
      r.label = lab
    if len({r.label for r in runs}) != len(runs):
      raise CompareError(f"labels must differ: {[r.label for r in runs]}")
    return
  for r, name in zip(runs, _unique([_default_label(r) for r in runs], runs)):
    r.label = name


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
