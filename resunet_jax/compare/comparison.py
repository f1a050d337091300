"""The comparison itself: ``compare_runs`` resolves the runs, checks that they can be compared,
reads their scores and computes the per-source statistics; ``Comparison`` holds the result.

Scores (the SiSEC 2018 aggregation, as ``eval.py`` reports them). Every per-track JSON holds
museval's per-window values; a track's score is the median over its windows (NaN windows ignored,
``evaluation.read_track_medians``), a run's score for a source the median over tracks
(``evaluation.aggregate``, the numbers of ``summary.csv`` and of museval's
``EvalStore.agg_frames_tracks_scores``). All JSON files of the split folder are read, as
``museval.EvalStore.add_eval_dir`` does. The paired statistics are ``stats``'.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from resunet_jax import evaluation
from resunet_jax import sources
from resunet_jax.compare import runs as runs_lib
from resunet_jax.compare import scalars
from resunet_jax.compare import stats
from resunet_jax.compare import tables

METRICS = evaluation.METRICS
CompareError = runs_lib.CompareError
Run = runs_lib.Run


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
    return tables.format_table(self)




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
  runs = [runs_lib.resolve_run(p, split, step) for p in paths]
  runs_lib.assign_labels(runs, labels)
  name = lambda r: f"run {r.label!r} ({r.describe()})"

  # Method and protocol present everywhere.
  for r in runs:
    methods = runs_lib.methods_of(r.eval_dir)
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
    r.tracks = runs_lib.track_names(folder)
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
  data = [runs_lib.data_settings(r.eval_dir) for r in runs]
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
        paired[t].append(stats.paired_stats(per_track[t]["SDR"][0], per_track[t]["SDR"][i],
                                      n_resamples=n_resamples, seed=seed, confidence=confidence,
                                      tie_tolerance=tie_tolerance))
    have = [i for i, s in enumerate(summary[t]) if s is not None]
    counts = stats.best_counts(per_track[t]["SDR"][have])
    best[t] = [counts[have.index(i)] if i in have else 0 for i in range(len(runs))]

  curve_data = [scalars.read_scalars(r.workdir, notes) if curves and r.workdir else {}
                for r in runs]
  settings = {"n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence),
              "tie_tolerance_db": float(tie_tolerance), "common_tracks": bool(common_tracks)}
  return Comparison(runs=runs, method=method, protocol=protocol, split=split, tracks=tracks,
                    dropped=dropped, targets=targets, per_track=per_track, summary=summary,
                    paired=paired, best=best, curves=curve_data, settings=settings,
                    warnings=notes)

