"""Compares evaluated runs: per-source tables, paired per-track statistics, plots, learning curves.

  python -m resunet_jax.compare RUN_OR_EVAL_DIR RUN_OR_EVAL_DIR [...] [--out DIR]
  resunet-compare /tmp/run_a /tmp/run_b --method=model --protocol=authors

A run is one of

* an evaluation folder written by ``eval.py`` (``<eval_dir>/<method>/<protocol>/<split>/*.json``,
  see ``resunet_jax.evaluation``);
* a training work directory: its evaluations live in ``<workdir>/eval/step_<n>/<split>``; the
  newest evaluated step (largest n) is used unless ``step`` names one. Its TensorBoard scalars
  (clu's event files in the work directory) give learning curves;
* a model directory with ``<checkpoint>/eval/<split>``.

Scores (the SiSEC 2018 aggregation, as ``eval.py`` reports them). Every per-track JSON holds
museval's per-window values; a track's score is the median over its windows (NaN windows ignored,
``evaluation.read_track_medians``), a run's score for a source the median over tracks
(``evaluation.aggregate``, the numbers of ``summary.csv`` and of museval's
``EvalStore.agg_frames_tracks_scores``). All JSON files of the split folder are read, as
``museval.EvalStore.add_eval_dir`` does.

Paired statistics, per source, of every run against the FIRST run, on the tracks both scored with
a finite SDR: d_i = SDR_i(run) - SDR_i(first run). Reported: the median of d (not the difference of
the two medians), a percentile bootstrap confidence interval for it (``n_resamples`` resamples of
the tracks with replacement, numpy's PCG64 generator seeded with ``seed`` afresh for every
comparison, the interval between the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the
resampled medians, numpy's linear interpolation), and win/tie/loss counts: tracks with d > tol,
|d| <= tol, d < -tol (``tie_tolerance`` tol, default 0 dB). ``best`` counts, among all runs, the
tracks where a run's SDR is the highest alone (a shared maximum counts for no run).

Outputs (``write_outputs``; nothing is overwritten without ``force``, every file is written
atomically): ``table.txt`` (the console table), ``summary.csv`` (per source and run: medians, paired
statistics), ``tracks.csv`` (per source, track and run: the track's medians and its SDR difference),
``comparison.json`` (everything, with the runs' paths and steps), ``per_track_sdr.png`` (per-track
SDR, one panel per source), and with work directories ``curves.csv`` and ``learning_curves.png``.
"""
import argparse
import csv
import dataclasses
import glob
import io
import json
import os
import re
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from resunet_jax import evaluation
from resunet_jax import fileutil
from resunet_jax import sources

METRICS = evaluation.METRICS
TABLE_METRICS = ("SDR", "SIR", "SAR")
DEFAULT_CURVES = ("train/loss", "val/sdr")  # plus every val/sdr_<source> found
OUTPUT_FILES = ("table.txt", "summary.csv", "tracks.csv", "comparison.json", "curves.csv",
                "per_track_sdr.png", "learning_curves.png")
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


@dataclasses.dataclass
class Comparison:
  """What ``compare_runs`` returns; run i of every per-run list is ``runs[i]``.

  ``per_track[target][metric]``: (runs, tracks) array of track medians (NaN: not scored / all
  windows NaN). ``summary[target][i]``: {"tracks", "SDR", "SIR", "ISR", "SAR"} of run i (medians
  over tracks) or None when run i has no such target. ``paired[target][i]``: run i against run 0:
  {"pairs", "median_diff", "ci_low", "ci_high", "wins", "ties", "losses"} (None for run 0 or when
  either run lacks the target). ``best[target][i]``: tracks where run i alone has the highest SDR.
  ``curves[i]``: {tag: (steps, values)} of run i's TensorBoard scalars ({} without a work dir).
  """
  runs: List[Run]
  method: str
  protocol: str
  split: str
  tracks: List[str]
  dropped: Dict[str, List[str]]  # label -> its tracks left out (common_tracks)
  targets: List[str]
  per_track: Dict[str, Dict[str, np.ndarray]]
  summary: Dict[str, List[Optional[dict]]]
  paired: Dict[str, List[Optional[dict]]]
  best: Dict[str, List[int]]
  curves: List[Dict[str, tuple]]
  settings: dict
  warnings: List[str] = dataclasses.field(default_factory=list)

  @property
  def labels(self) -> List[str]:
    return [r.label for r in self.runs]

  def to_dict(self) -> dict:
    """Everything as JSON-able data (NaN as None)."""
    clean = lambda x: None if isinstance(x, float) and not np.isfinite(x) else x
    per_track = {t: {n: {r.label: {m: clean(float(self.per_track[t][m][i, j])) for m in METRICS}
                         for i, r in enumerate(self.runs)}
                     for j, n in enumerate(self.tracks)} for t in self.targets}
    return {
        "method": self.method, "protocol": self.protocol, "split": self.split,
        "runs": [dataclasses.asdict(r) for r in self.runs],
        "tracks": list(self.tracks), "dropped": self.dropped, "targets": list(self.targets),
        "summary": {t: {r.label: (None if s is None else {k: clean(v) for k, v in s.items()})
                        for r, s in zip(self.runs, self.summary[t])} for t in self.targets},
        "paired_sdr_vs_first": {t: {r.label: (None if p is None else
                                              {k: clean(v) for k, v in p.items()})
                                    for r, p in zip(self.runs[1:], self.paired[t][1:])}
                                for t in self.targets},
        "best": {t: dict(zip(self.labels, self.best[t])) for t in self.targets},
        "per_track": per_track,
        "curves": {r.label: {tag: {"steps": [int(s) for s in st], "values": [clean(float(v))
                                                                             for v in va]}
                             for tag, (st, va) in c.items()}
                   for r, c in zip(self.runs, self.curves) if c},
        "settings": self.settings, "warnings": list(self.warnings),
    }

  def format_table(self) -> str:
    return format_table(self)


# ------------------------------------------------------------------------------------------------
# Finding the evaluations.


def _listdir(path):
  try:
    return sorted(os.listdir(path))
  except OSError:
    return []


def _methods(eval_dir):
  return [m for m in _listdir(eval_dir) if (m == "model" or m.startswith("oracle_"))
          and any(os.path.isdir(os.path.join(eval_dir, m, p)) for p in evaluation.PROTOCOLS)]


def is_eval_dir(path) -> bool:
  """An ``eval.py`` output folder (settings.json, or <method>/<protocol>/ folders)."""
  return os.path.isfile(os.path.join(path, "settings.json")) or bool(_methods(path))


def _splits(eval_dir, method, protocol):
  return [s for s in _listdir(os.path.join(eval_dir, method, protocol))
          if os.path.isdir(os.path.join(eval_dir, method, protocol, s))]


def _eval_splits(eval_dir):
  """Splits an eval dir holds (from its folders, else from settings.json)."""
  found = {s for m in _methods(eval_dir) for p in evaluation.PROTOCOLS
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


def _assign_labels(runs, labels):
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


def _track_names(folder):
  return sorted(f[:-len(".json")] for f in _listdir(folder) if f.endswith(".json"))


def _data_settings(eval_dir):
  try:
    with open(os.path.join(eval_dir, "settings.json")) as f:
      common = json.load(f)["common"]
  except (OSError, KeyError, TypeError, ValueError):
    return None
  tracks = common.get("tracks") or {}
  return {"dataset": tracks.get("dataset"), "variant": tracks.get("variant"),
          "window_seconds": common.get("window_seconds")}


# ------------------------------------------------------------------------------------------------
# Statistics.


def bootstrap_median_ci(diffs, n_resamples=10000, seed=0, confidence=0.95, block=2000):
  """Percentile bootstrap interval of the median of ``diffs`` (resampling its entries).

  ``n_resamples`` samples of len(diffs) entries drawn with replacement by
  ``np.random.default_rng(seed)``, in blocks of ``block`` samples; the interval is the
  ((1 - confidence) / 2, (1 + confidence) / 2) quantiles of their medians (linear interpolation).
  Returns (low, high); NaN for no data.
  """
  d = np.asarray(diffs, np.float64)
  if d.size == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  medians = np.empty(n_resamples, np.float64)
  for start in range(0, n_resamples, block):
    b = min(block, n_resamples - start)
    medians[start:start + b] = np.median(d[rng.integers(0, d.size, size=(b, d.size))], axis=1)
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(medians, [alpha, 1.0 - alpha])
  return float(low), float(high)


def paired_stats(first, other, *, n_resamples=10000, seed=0, confidence=0.95, tie_tolerance=0.0
                 ) -> dict:
  """``other - first`` per track (tracks where both are finite): median, bootstrap CI, W/T/L."""
  first, other = np.asarray(first, np.float64), np.asarray(other, np.float64)
  ok = np.isfinite(first) & np.isfinite(other)
  d = other[ok] - first[ok]
  low, high = bootstrap_median_ci(d, n_resamples, seed, confidence)
  return {"pairs": int(d.size), "median_diff": float(np.median(d)) if d.size else float("nan"),
          "ci_low": low, "ci_high": high, "wins": int(np.sum(d > tie_tolerance)),
          "ties": int(np.sum(np.abs(d) <= tie_tolerance)),
          "losses": int(np.sum(d < -tie_tolerance))}


def best_counts(sdr) -> List[int]:
  """Per run, the tracks (columns of ``sdr``, (runs, tracks)) where it alone has the highest SDR;
  tracks with a NaN for any run are skipped."""
  sdr = np.asarray(sdr, np.float64)
  counts = [0] * sdr.shape[0]
  for column in sdr.T:
    if np.all(np.isfinite(column)):
      top = np.flatnonzero(column == column.max())
      if top.size == 1:
        counts[int(top[0])] += 1
  return counts


# ------------------------------------------------------------------------------------------------
# TensorBoard scalars.


def read_scalars(workdir, problems=None) -> Dict[str, tuple]:
  """{tag: (steps, values)} from the event files in ``workdir`` (clu's metric writers).

  TF2 / clu write scalars as tensors with the "scalars" plugin; TF1-style summaries use
  ``simple_value``: both are read. When several files (restarts) hold a step, the newest file wins.
  A file that cannot be read to its end gives the events before the damage; ``problems`` (a list)
  receives a message about it.
  """
  files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not files:
    return {}
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top
  # File names start with the creation time (events.out.tfevents.<seconds>.<host>...): sorted,
  # a restart's file comes after the earlier ones.
  series: Dict[str, Dict[int, float]] = {}
  for path in files:
    events = []
    try:
      for event in event_file_loader.LegacyEventFileLoader(path).Load():
        events.append(event)
    except Exception as e:  # pylint: disable=broad-except
      message = f"{path}: event file unreadable after {len(events)} events ({e})"
      warnings.warn(message)
      if problems is not None:
        problems.append(message)
    for event in events:
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          v = float(value.simple_value)
        elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
          try:
            a = tensor_util.make_ndarray(value.tensor)
          except Exception:  # pylint: disable=broad-except
            continue
          if a.size != 1 or a.dtype.kind not in "fiub":
            continue
          v = float(a.reshape(()))
        else:
          continue
        series.setdefault(value.tag, {})[int(event.step)] = v
  return {tag: (np.array(sorted(s), np.int64), np.array([s[k] for k in sorted(s)], np.float64))
          for tag, s in sorted(series.items())}


def _curve_tags(curves, wanted):
  present = sorted({t for c in curves for t in c})
  if wanted is not None:
    return [t for t in wanted if t in present]
  extra = [t for t in present if t.startswith("val/sdr_")]
  return [t for t in DEFAULT_CURVES if t in present] + extra


# ------------------------------------------------------------------------------------------------
# The comparison.


def compare_runs(paths: Sequence[str], *, method="model", protocol="authors", split=None,
                 step=None, common_tracks=False, labels=None, n_resamples=10000, seed=0,
                 confidence=0.95, tie_tolerance=0.0, curves=True) -> Comparison:
  """Compares evaluated runs (eval dirs, work dirs, model dirs); see the module docstring.

  Args:
    paths: two or more runs; differences are taken against the first.
    method: ``model`` or ``oracle_<kind>``.
    protocol: ``authors`` or ``sisec_joint``; every run must have it.
    split: the split to compare (default: a run's only split, else ``test``); all runs must agree.
    step: for work directories, the evaluated step to use (default: the newest evaluated).
    common_tracks: compare the tracks all runs scored instead of refusing different track sets.
    labels: names of the runs (default: from their paths).
    n_resamples, seed, confidence: the bootstrap of the median paired SDR difference.
    tie_tolerance: |difference| <= this (dB) is a tie.
    curves: read the work directories' TensorBoard scalars.

  Raises:
    CompareError: fewer than two runs, a path that is no run, a method, protocol or split that a
      run lacks, runs on different splits or (without common_tracks) different track sets.
  """
  paths = list(paths)
  if len(paths) < 2:
    raise CompareError(f"compare needs at least two runs; got {len(paths)}"
                       + (f" ({paths[0]})" if paths else ""))
  if protocol not in evaluation.PROTOCOLS:
    raise CompareError(f"unknown protocol {protocol!r}; expected one of {evaluation.PROTOCOLS}")
  if not 0.0 < confidence < 1.0:
    raise CompareError(f"confidence must be in (0, 1); got {confidence}")
  if n_resamples < 1:
    raise CompareError(f"n_resamples must be positive; got {n_resamples}")
  runs = [resolve_run(p, split, step) for p in paths]
  _assign_labels(runs, labels)
  name = lambda r: f"run {r.label!r} ({r.describe()})"

  # Method and protocol present everywhere.
  for r in runs:
    methods = _methods(r.eval_dir)
    if method not in methods:
      raise CompareError(f"{name(r)} has no results of method {method!r} (it has: "
                         f"{', '.join(methods) or 'none'}); choose one with --method")
    protocols = [p for p in evaluation.PROTOCOLS
                 if os.path.isdir(os.path.join(r.eval_dir, method, p))]
    if protocol not in protocols:
      raise CompareError(f"{name(r)} has no {protocol!r} results for method {method!r} (it has: "
                         f"{', '.join(protocols)}); all runs are compared under one protocol "
                         "(--protocol)")
  # The same split everywhere.
  splits = {r.split for r in runs}
  if len(splits) > 1:
    raise CompareError("the runs were scored on different splits: " + "; ".join(
        f"{name(r)}: {r.split}" for r in runs) + " (choose one with --split)")
  split = runs[0].split
  for r in runs:
    folder = os.path.join(r.eval_dir, method, protocol, split)
    r.tracks = _track_names(folder)
    if not r.tracks:
      raise CompareError(f"{name(r)} has no scored tracks in {folder}")

  # The same tracks everywhere.
  sets = [set(r.tracks) for r in runs]
  common = set.intersection(*sets)
  dropped = {}
  if any(s != common for s in sets):
    if not common_tracks:
      lines = [f"{name(r)}: {len(r.tracks)} tracks" + (
          f", not in every run: {', '.join(sorted(s - common))}" if s - common else "")
               for r, s in zip(runs, sets)]
      raise CompareError("the runs were scored on different track sets (use --common_tracks to "
                         "compare the tracks they share):\n  " + "\n  ".join(lines))
    if not common:
      raise CompareError("the runs share no scored track: " + "; ".join(
          f"{name(r)}: {', '.join(r.tracks)}" for r in runs))
    dropped = {r.label: sorted(s - common) for r, s in zip(runs, sets)}
  tracks = sorted(common)

  # Scores: evaluation.aggregate reads the per-track JSONs (median over windows) and takes the
  # medians over tracks (the numbers of summary.csv).
  aggs = [evaluation.aggregate(r.eval_dir, method, protocol, split, tracks) for r in runs]
  targets = [t for t in sources.TARGETS if any(t in a["targets"] for a in aggs)]
  shared = [t for t in targets if all(t in a["targets"] for a in aggs)]
  if not shared:
    raise CompareError("the runs share no scored source: " + "; ".join(
        f"{name(r)}: {', '.join(a['targets'])}" for r, a in zip(runs, aggs)))
  notes = []
  for t in targets:
    if t not in shared:
      notes.append(f"source {t!r} is scored by " + ", ".join(
          r.label for r, a in zip(runs, aggs) if t in a["targets"]) + " only")
  data = [_data_settings(r.eval_dir) for r in runs]
  known = [(r, d) for r, d in zip(runs, data) if d is not None]
  if len({json.dumps(d, sort_keys=True) for _, d in known}) > 1:
    notes.append("the runs were evaluated on different data or windows: " + "; ".join(
        f"{r.label}: {d}" for r, d in known))

  per_track, summary, paired, best = {}, {}, {}, {}
  for t in targets:
    per_track[t] = {m: np.array([[a["tracks"][n].get(t, {}).get(m, np.nan) for n in tracks]
                                 for a in aggs], np.float64) for m in METRICS}
    summary[t] = [dict(a["targets"][t]) if t in a["targets"] else None for a in aggs]
    paired[t] = [None]
    for i in range(1, len(runs)):
      if summary[t][0] is None or summary[t][i] is None:
        paired[t].append(None)
      else:
        paired[t].append(paired_stats(per_track[t]["SDR"][0], per_track[t]["SDR"][i],
                                      n_resamples=n_resamples, seed=seed, confidence=confidence,
                                      tie_tolerance=tie_tolerance))
    have = [i for i, s in enumerate(summary[t]) if s is not None]
    counts = best_counts(per_track[t]["SDR"][have])
    best[t] = [counts[have.index(i)] if i in have else 0 for i in range(len(runs))]

  curve_data = [read_scalars(r.workdir, notes) if curves and r.workdir else {} for r in runs]
  settings = {"n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence),
              "tie_tolerance_db": float(tie_tolerance), "common_tracks": bool(common_tracks)}
  return Comparison(runs=runs, method=method, protocol=protocol, split=split, tracks=tracks,
                    dropped=dropped, targets=targets, per_track=per_track, summary=summary,
                    paired=paired, best=best, curves=curve_data, settings=settings,
                    warnings=notes)


# ------------------------------------------------------------------------------------------------
# Output.


def _f(x, fmt="{:.3f}"):
  return "nan" if x is None or not np.isfinite(x) else fmt.format(x)


def format_table(c: Comparison) -> str:
  """Fixed-width tables, one per source."""
  pct = f"{100 * c.settings['confidence']:g}%"
  lines = [f"Comparing {len(c.runs)} runs: method {c.method}, protocol {c.protocol}, split "
           f"{c.split}, {len(c.tracks)} tracks"]
  for i, r in enumerate(c.runs):
    lines.append(f"  [{i + 1}] {r.label}: {r.describe()}")
  for label, gone in c.dropped.items():
    if gone:
      lines.append(f"  --common_tracks: {len(gone)} track(s) of {label} left out: "
                   + ", ".join(gone))
  if c.dropped:
    lines.append(f"  --common_tracks: {sum(map(len, c.dropped.values()))} track score(s) "
                 f"dropped in all; {len(c.tracks)} tracks compared")
  for note in c.warnings:
    lines.append(f"  note: {note}")
  lines += [
      "SDR/SIR/SAR (dB): median over tracks of each track's median over 1 s windows (SiSEC 2018).",
      "dSDR: median over tracks of the paired difference d = SDR(run) - SDR([1]);",
      f"{pct} CI: percentile bootstrap ({c.settings['n_resamples']} resamples of the tracks, "
      f"seed {c.settings['seed']}); pairs: tracks with both SDRs finite;",
      f"W/T/L: tracks where the run beats / ties (|d| <= {c.settings['tie_tolerance_db']:g} dB) "
      "/ loses to [1]."]
  show_best = len(c.runs) > 2
  if show_best:
    lines.append("best: tracks where the run alone has the highest SDR of all runs.")
  for t in c.targets:
    head = ["run", "tracks"] + list(TABLE_METRICS) + ["dSDR", f"{pct} CI", "pairs", "W/T/L"]
    head += ["best"] if show_best else []
    rows = []
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [f"[{i + 1}] {r.label}"]
      if s is None:
        row += ["-"] * (len(TABLE_METRICS) + 1)
      else:
        row += [str(s["tracks"])] + [_f(s[m]) for m in TABLE_METRICS]
      if p is None:
        row += ["", "", "", ""]
      else:
        row += [_f(p["median_diff"], "{:+.3f}"),
                f"[{_f(p['ci_low'], '{:+.3f}')}, {_f(p['ci_high'], '{:+.3f}')}]",
                str(p["pairs"]), f"{p['wins']}/{p['ties']}/{p['losses']}"]
      if show_best:
        row.append(str(c.best[t][i]) if s is not None else "")
      rows.append(row)
    right = set(range(1, len(head)))
    widths = [max(len(x[k]) for x in [head] + rows) for k in range(len(head))]
    fmt = lambda x: "  ".join((v.rjust(w) if k in right else v.ljust(w))
                              for k, (v, w) in enumerate(zip(x, widths))).rstrip()
    lines += ["", t, fmt(head)] + [fmt(x) for x in rows]
  return "\n".join(lines)


def _csv_text(header, rows):
  buf = io.StringIO(newline="")
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buf.getvalue()


def _num(x):
  return "" if x is None or not np.isfinite(x) else f"{x:.5f}"


def summary_csv(c: Comparison) -> str:
  header = (["target", "run", "label", "tracks"] + list(METRICS) + [
      "sdr_pairs", "sdr_median_diff", "sdr_diff_ci_low", "sdr_diff_ci_high", "wins", "ties",
      "losses", "best_tracks", "eval_dir", "step"])
  rows = []
  for t in c.targets:
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [t, i + 1, r.label]
      row += ([""] * (1 + len(METRICS)) if s is None else
              [s["tracks"]] + [_num(s[m]) for m in METRICS])
      row += ([""] * 7 if p is None else
              [p["pairs"], _num(p["median_diff"]), _num(p["ci_low"]), _num(p["ci_high"]),
               p["wins"], p["ties"], p["losses"]])
      row += [c.best[t][i] if s is not None else "", r.eval_dir,
              "" if r.step is None else r.step]
      rows.append(row)
  return _csv_text(header, rows)


def tracks_csv(c: Comparison) -> str:
  header = ["target", "track", "run", "label"] + list(METRICS) + ["sdr_minus_first"]
  rows = []
  for t in c.targets:
    if c.summary[t][0] is None:
      first = np.full(len(c.tracks), np.nan)
    else:
      first = c.per_track[t]["SDR"][0]
    for j, n in enumerate(c.tracks):
      for i, r in enumerate(c.runs):
        if c.summary[t][i] is None:
          continue
        v = {m: c.per_track[t][m][i, j] for m in METRICS}
        diff = v["SDR"] - first[j] if i > 0 else np.nan
        rows.append([t, n, i + 1, r.label] + [_num(v[m]) for m in METRICS] + [_num(diff)])
  return _csv_text(header, rows)


def _shortest(v):
  """The shortest text that reads back as v: float32 values (TensorBoard's) as float32."""
  v = float(v)
  return str(np.float32(v)) if np.isfinite(v) and float(np.float32(v)) == v else repr(v)


def curves_csv(c: Comparison) -> str:
  rows = [[i + 1, r.label, tag, int(s), _shortest(v)]
          for i, (r, cur) in enumerate(zip(c.runs, c.curves))
          for tag, (steps, values) in cur.items() for s, v in zip(steps, values)]
  return _csv_text(["run", "label", "tag", "step", "value"], rows)


def _new_figure(width, height):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
  return fig


_MARKERS = "osD^v<>ph*"


def plot_per_track(c: Comparison):
  """Per-track SDR of every run, one panel per source (a matplotlib Figure)."""
  n = len(c.tracks)
  runs = len(c.runs)
  fig = _new_figure(max(9.0, 0.32 * n * max(1.0, runs / 3) + 5.0), 3.2 * len(c.targets) + 1.4)
  axes = fig.subplots(len(c.targets), 1, squeeze=False, sharex=True)[:, 0]
  x = np.arange(n)
  width = 0.8 / runs
  colors = [f"C{i % 10}" for i in range(runs)]
  for ax, t in zip(axes, c.targets):
    for i, r in enumerate(c.runs):
      if c.summary[t][i] is None:
        continue
      y = c.per_track[t]["SDR"][i]
      offset = (i - (runs - 1) / 2) * width
      ax.bar(x + offset, y, width * 0.9, color=colors[i], alpha=0.35, linewidth=0)
      ax.plot(x + offset, y, _MARKERS[i % len(_MARKERS)], color=colors[i], markersize=4,
              label=f"[{i + 1}] {r.label} (median {_f(c.summary[t][i]['SDR'], '{:.2f}')})")
      ax.axhline(c.summary[t][i]["SDR"], color=colors[i], linestyle="--", linewidth=0.8)
    ax.set_title(f"{t}: per-track SDR (median over 1 s windows; dashed: median over tracks), "
                 f"{c.method}/{c.protocol}/{c.split}", fontsize=10)
    ax.set_ylabel("SDR (dB)")
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
  axes[-1].set_xticks(x)
  axes[-1].set_xticklabels([s if len(s) <= 32 else s[:30] + "..." for s in c.tracks],
                           rotation=90, fontsize=7)
  axes[-1].set_xlim(-0.6, n - 0.4)
  return fig


def plot_curves(c: Comparison, tags=None):
  """Learning curves of the runs with TensorBoard scalars (a Figure), or None."""
  tags = _curve_tags(c.curves, tags)
  if not tags:
    return None
  cols = min(3, len(tags))
  rows = -(-len(tags) // cols)
  fig = _new_figure(5.0 * cols, 3.4 * rows)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, tag in zip(axes, tags):
    positive = True
    for i, (r, cur) in enumerate(zip(c.runs, c.curves)):
      if tag not in cur:
        continue
      steps, values = cur[tag]
      ax.plot(steps, values, color=f"C{i % 10}", marker="." if len(steps) < 30 else None,
              label=f"[{i + 1}] {r.label}")
      positive &= bool(np.all(values[np.isfinite(values)] > 0))
      if r.step is not None:
        ax.axvline(r.step, color=f"C{i % 10}", linestyle=":", linewidth=0.8)
    if "loss" in tag and positive:
      ax.set_yscale("log")
    ax.set_title(tag, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in axes[len(tags):]:
    ax.set_visible(False)
  fig.suptitle("learning curves (dotted: the evaluated step)", fontsize=10)
  return fig


def _write_text(path, text):
  with fileutil.atomic_text_file(path, newline="") as f:
    f.write(text)


def _write_figure(path, fig):
  tmp = fileutil.temp_file(path)
  try:
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def default_out_dir() -> str:
  return os.path.abspath(time.strftime("compare_%Y%m%d-%H%M%S"))


def check_out_dir(out_dir, force=False) -> List[str]:
  """The output files already in out_dir; an error when there are some and not ``force``."""
  if out_dir is None:
    return []
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise CompareError(f"--out {out_dir} exists and is not a directory")
  existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, f))]
  if existing and not force:
    raise CompareError(f"{out_dir} already holds {', '.join(existing)}; not overwriting "
                       "(use --force or another --out)")
  return existing


def write_outputs(c: Comparison, out_dir=None, *, force=False, plot=True, curve_tags=None
                  ) -> List[str]:
  """Writes the files listed in the module docstring into out_dir; returns their paths.

  An existing output file is an error unless ``force`` (then the outputs of an earlier comparison
  that this one does not produce, e.g. learning_curves.png, are removed too). Files of other names
  in out_dir are left alone.
  """
  if out_dir is None:
    out_dir = base = default_out_dir()
    k = 1
    while os.path.exists(out_dir):
      k += 1
      out_dir = f"{base}_{k}"
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  has_curves = any(c.curves) and bool(_curve_tags(c.curves, curve_tags))
  files = {"table.txt": c.format_table() + "\n", "summary.csv": summary_csv(c),
           "tracks.csv": tracks_csv(c),
           "comparison.json": json.dumps(c.to_dict(), indent=2, allow_nan=False) + "\n"}
  if any(c.curves):
    files["curves.csv"] = curves_csv(c)
  figures = (["per_track_sdr.png"] + (["learning_curves.png"] if has_curves else [])
             if plot else [])
  existing = check_out_dir(out_dir, force)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, text in files.items():
    _write_text(os.path.join(out_dir, name), text)
    written.append(os.path.join(out_dir, name))
  for name in figures:
    fig = plot_per_track(c) if name == "per_track_sdr.png" else plot_curves(c, curve_tags)
    _write_figure(os.path.join(out_dir, name), fig)
    written.append(os.path.join(out_dir, name))
  for name in existing:  # stale outputs of an earlier comparison (force)
    path = os.path.join(out_dir, name)
    if path not in written:
      os.unlink(path)
  return written


# ------------------------------------------------------------------------------------------------
# Command line.


def _parser():
  p = argparse.ArgumentParser(
      prog="python -m resunet_jax.compare",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Compare two or more evaluated runs (eval.py output) per source: median SDR/SIR/SAR, "
          "the median paired per-track SDR difference against the FIRST run with a bootstrap "
          "confidence interval, win/tie/loss counts; tables on the console and as CSV, plots as "
          "PNG (per-track SDR; learning curves from the TensorBoard scalars of work directories)."),
      epilog=(
          "A RUN is an eval.py output folder (--eval_dir), a training work directory (its\n"
          "evaluation <workdir>/eval/step_<n>/<split> of the NEWEST evaluated step n is used\n"
          "unless --step names one), or a model directory with eval/<split>.\n"
          "Scores: per track the median over 1 s windows, per run the median over tracks\n"
          "(SiSEC 2018, as eval.py). The CI is a percentile bootstrap of the median paired\n"
          "difference (tracks resampled with replacement, numpy default_rng(seed)).\n"
          "Outputs go to --out: table.txt, summary.csv, tracks.csv, comparison.json,\n"
          "per_track_sdr.png, and with work directories curves.csv and learning_curves.png."))
  p.add_argument("runs", nargs="+", metavar="RUN_OR_EVAL_DIR",
                 help="evaluated runs; differences are taken against the first")
  p.add_argument("--method", default="model",
                 help="method to compare: model (default) or oracle_<kind>, e.g. oracle_irm")
  p.add_argument("--protocol", default="authors", choices=evaluation.PROTOCOLS,
                 help="museval protocol (default: authors)")
  p.add_argument("--split", default=None,
                 help="split (default: a run's only split, else test); all runs must agree")
  p.add_argument("--step", type=int, default=None,
                 help="for work directories: the evaluated step (default: the newest evaluated)")
  p.add_argument("--common_tracks", action="store_true",
                 help="compare only the tracks all runs scored (default: different track sets "
                      "are an error)")
  p.add_argument("--labels", default=None,
                 help="comma-separated run names (default: from the paths)")
  p.add_argument("--out", default=None,
                 help="output folder (default: a new ./compare_<date>-<time>)")
  p.add_argument("--force", action="store_true", help="overwrite outputs in --out")
  p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (10000)")
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
  p.add_argument("--confidence", type=float, default=0.95, help="CI level (0.95)")
  p.add_argument("--tie_tolerance", type=float, default=0.0,
                 help="|SDR difference| <= this (dB) counts as a tie (default 0)")
  p.add_argument("--curves", default=None,
                 help="comma-separated TensorBoard tags to plot (default: train/loss, val/sdr, "
                      "val/sdr_<source>)")
  p.add_argument("--no_plot", action="store_true", help="write no PNG")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # reading event files may import TF
  labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
  tags = [s.strip() for s in args.curves.split(",") if s.strip()] if args.curves else None
  try:
    check_out_dir(args.out, args.force)  # before any work
    c = compare_runs(args.runs, method=args.method, protocol=args.protocol, split=args.split,
                     step=args.step, common_tracks=args.common_tracks, labels=labels,
                     n_resamples=args.bootstrap, seed=args.seed, confidence=args.confidence,
                     tie_tolerance=args.tie_tolerance)
    print(c.format_table())
    written = write_outputs(c, args.out, force=args.force, plot=not args.no_plot,
                            curve_tags=tags)
  except CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"\nwrote {len(written)} files to {os.path.dirname(written[0])}: "
        + ", ".join(os.path.basename(w) for w in written))
  return 0


if __name__ == "__main__":  # `python -m` imports the package (and its XLA flags) first
  sys.exit(main())
