"""The comparison itself: ``compare_runs`` resolves the runs, checks that they can be compared,
reads their scores and computes the per-source statistics; ``Comparison`` holds the result.

Scores (the SiSEC 2018 aggregation, as ``eval.py`` reports them). Every per-track JSON holds
museval's per-window values; a track's score is the median over its windows (NaN windows ignored,
``evaluation.read_track_medians``), a run's score for a source the median over tracks
(``evaluation.aggregate``, the numbers of ``summary.csv`` and of museval's
``EvalStore.agg_frames_tracks_scores``). All JSON files of the split folder are read, as
``museval.EvalStore.add_eval_dir`` does. The paired statistics are ``stats``'.

Seeds (``runs``: the replicas of a replicated run, or a group). Every seed is read as a run of its
own; a run with several seeds reports, per source, the mean over seeds of each seed's median over
tracks and their standard deviation (ddof 1), a track's score is its mean over the seeds, and the
paired statistics use the two-level bootstrap (``stats.seed_track_median_ci``). The seeds of a run
must have scored the same tracks and sources (an error names the run and the seed otherwise). A run
with one seed is compared exactly as before seeds existed.
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
  windows NaN); with several seeds a track's value is its mean over the run's seeds.
  ``per_seed[target][metric][i]``: (seeds of run i, tracks) array, the seeds' own track medians.
  ``summary[target][i]``: {"tracks", "SDR", "SIR", "ISR", "SAR", "seeds"} of run i (medians over
  tracks; several seeds: the mean over seeds of each seed's median, plus "<metric>_seed_sd", the
  standard deviation over seeds) or None when run i has no such target. ``seed_summary[target][i]``:
  per seed of run i, {"tracks", "SDR", "SIR", "ISR", "SAR"} (None: no such target).
  ``paired[target][i]``: run i against run 0: {"pairs", "median_diff", "ci_low", "ci_high", "wins",
  "ties", "losses", "seeds", "ci_method"} (None for run 0 or when either run lacks the target).
  ``best[target][i]``: tracks where run i alone has the highest SDR. ``curves[i]``: {tag: (steps,
  values)} of run i's TensorBoard scalars ({} without a work dir); ``member_curves[i]``: a group's,
  {member: {tag: (steps, values)}} ({} for other runs).
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
  per_seed: Dict[str, Dict[str, List[np.ndarray]]] = dataclasses.field(default_factory=dict)
  seed_summary: Dict[str, List[Optional[List[dict]]]] = dataclasses.field(default_factory=dict)
  member_curves: List[Dict[str, Dict[str, tuple]]] = dataclasses.field(default_factory=list)

  @property
  def labels(self) -> List[str]:
    return [r.label for r in self.runs]

  @property
  def multi_seed(self) -> bool:
    """Some run has several seeds (the tables and files then show the seed columns)."""
    return any(r.num_seeds > 1 for r in self.runs)

  def to_dict(self) -> dict:
    """Everything as JSON-able data (NaN as None)."""
    clean = lambda x: None if isinstance(x, float) and not np.isfinite(x) else x
    per_track = {t: {n: {r.label: {m: clean(float(self.per_track[t][m][i, j])) for m in METRICS}
                         for i, r in enumerate(self.runs)}
                     for j, n in enumerate(self.tracks)} for t in self.targets}
    series = lambda st, va: {"steps": [int(s) for s in st], "values": [clean(float(v))
                                                                       for v in va]}
    curves = {label: {tag: series(*sv) for tag, sv in c.items()}
              for _, label, c, _ in self.curve_sets()}
    out = {
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
        "curves": curves,
        "settings": self.settings, "warnings": list(self.warnings),
    }
    if self.multi_seed:  # per seed of the runs with several: its medians and its track medians
      out["per_seed"] = {
          t: {r.label: {s.name: {
              "summary": {k: clean(v) for k, v in self.seed_summary[t][i][k_seed].items()},
              "per_track": {n: {m: clean(float(self.per_seed[t][m][i][k_seed, j]))
                                for m in METRICS} for j, n in enumerate(self.tracks)}}
              for k_seed, s in enumerate(r.seeds)}
              for i, r in enumerate(self.runs)
              if r.num_seeds > 1 and self.seed_summary[t][i] is not None}
          for t in self.targets}
    return out

  def format_table(self) -> str:
    return tables.format_table(self)

  def curve_sets(self) -> List[tuple]:
    """[(run index, label, {tag: (steps, values)}, evaluated step)] of every run with curves and
    of every member of a group with them (labelled ``<run label>/<member>``)."""
    out = []
    members = self.member_curves or [{}] * len(self.runs)
    for i, (r, cur, by_member) in enumerate(zip(self.runs, self.curves, members)):
      if cur:
        out.append((i, r.label, cur, r.step))
      for member, mc in by_member.items():
        if mc:
          step = next((s.step for s in r.seeds if s.name.split("/")[0] == member), None)
          out.append((i, f"{r.label}/{member}", mc, step))
    return out


def _seed_mean_summary(seed_summaries, metrics) -> dict:
  """A run's summary from its seeds': mean and standard deviation over seeds."""
  out = {"tracks": min(s["tracks"] for s in seed_summaries)}
  for m in metrics:
    spread = stats.seed_spread([s[m] for s in seed_summaries])
    out[m] = spread["mean"]
    out[f"{m}_seed_sd"] = spread["sd"]
  out["seeds"] = len(seed_summaries)
  return out


def compare_runs(paths: Sequence, *, method="model", protocol="authors", split=None,
                 step=None, common_tracks=False, labels=None, n_resamples=10000, seed=0,
                 confidence=0.95, tie_tolerance=0.0, curves=True) -> Comparison:
  """Compares evaluated runs (eval dirs, work dirs, model dirs); see the module docstring.

  Args:
    paths: two or more runs; differences are taken against the first. A run is a path (its
      replicas, if it has ``replica_<k>`` folders, are its seeds) or a sequence of paths (a
      group: their seeds together, e.g. seeds trained as separate runs).
    method: ``model`` or ``oracle_<kind>``.
    protocol: ``authors`` or ``sisec_joint``; every run must have it.
    split: the split to compare (default: a run's only split, else ``test``); all runs must agree.
    step: for work directories, the evaluated step to use (default: the newest evaluated).
    common_tracks: compare the tracks all runs scored instead of refusing different track sets.
    labels: names of the runs (default, or a None entry: from their paths).
    n_resamples, seed, confidence: the bootstrap of the median paired SDR difference.
    tie_tolerance: |difference| <= this (dB) is a tie.
    curves: read the work directories' TensorBoard scalars.

  Raises:
    CompareError: fewer than two runs, a path that is no run, a method, protocol or split that a
      run (or one of its seeds) lacks, runs on different splits or (without common_tracks)
      different track sets, seeds of one run that scored different tracks or sources.
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
  runs = [runs_lib.resolve(p, split, step) for p in paths]
  runs_lib.assign_labels(runs, labels)
  name = lambda r: f"run {r.label!r} ({r.describe()})"
  seed_name = lambda r, s: f"{name(r)}, seed {s.name} ({s.eval_dir})" if s.name else name(r)

  # Method and protocol present everywhere.
  for r in runs:
    for s in r.seeds:
      methods = runs_lib.methods_of(s.eval_dir)
      if method not in methods:
        raise CompareError(f"{seed_name(r, s)} has no results of method {method!r} (it has: "
                           f"{', '.join(methods) or 'none'}); choose one with --method")
      protocols = [p for p in evaluation.PROTOCOLS
                   if os.path.isdir(os.path.join(s.eval_dir, method, p))]
      if protocol not in protocols:
        raise CompareError(f"{seed_name(r, s)} has no {protocol!r} results for method {method!r} "
                           f"(it has: {', '.join(protocols)}); all runs are compared under one "
                           "protocol (--protocol)")
  # The same split everywhere.
  splits = {r.split for r in runs}
  if len(splits) > 1:
    raise CompareError("the runs were scored on different splits: " + "; ".join(
        f"{name(r)}: {r.split}" for r in runs) + " (choose one with --split)")
  split = runs[0].split
  for r in runs:
    for s in r.seeds:
      folder = os.path.join(s.eval_dir, method, protocol, split)
      s.tracks = runs_lib.track_names(folder)
      if not s.tracks:
        raise CompareError(f"{seed_name(r, s)} has no scored tracks in {folder}")
    _check_same_tracks(r, name(r))
    r.tracks = list(r.seeds[0].tracks)

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
  # medians over tracks (the numbers of summary.csv), seed by seed.
  aggs = [[evaluation.aggregate(s.eval_dir, method, protocol, split, tracks) for s in r.seeds]
          for r in runs]
  run_targets = [_run_targets(r, a, name(r)) for r, a in zip(runs, aggs)]
  targets = [t for t in sources.TARGETS if any(t in ts for ts in run_targets)]
  shared = [t for t in targets if all(t in ts for ts in run_targets)]
  if not shared:
    raise CompareError("the runs share no scored source: " + "; ".join(
        f"{name(r)}: {', '.join(ts)}" for r, ts in zip(runs, run_targets)))
  notes = []
  for t in targets:
    if t not in shared:
      notes.append(f"source {t!r} is scored by " + ", ".join(
          r.label for r, ts in zip(runs, run_targets) if t in ts) + " only")
  data = [(f"{r.label}" + (f"/{s.name}" if s.name else ""), runs_lib.data_settings(s.eval_dir))
          for r in runs for s in r.seeds]
  known = [(who, d) for who, d in data if d is not None]
  if len({json.dumps(d, sort_keys=True) for _, d in known}) > 1:
    notes.append("the runs were evaluated on different data or windows: " + "; ".join(
        f"{who}: {d}" for who, d in known))
  if any(r.num_seeds > 1 for r in runs):
    single = [r.label for r in runs if r.num_seeds == 1]
    if single:
      notes.append(f"one seed only: {', '.join(single)}; its seed-to-seed variation is unknown "
                   "and not in the intervals")
  for r in runs:
    missing = runs_lib.missing_replicas(r)
    if missing:
      notes.append(missing)

  per_track, per_seed, summary, seed_summary, paired, best = {}, {}, {}, {}, {}, {}
  for t in targets:
    per_seed[t] = {m: [np.array([[a["tracks"][n].get(t, {}).get(m, np.nan) for n in tracks]
                                 for a in run_aggs], np.float64) for run_aggs in aggs]
                   for m in METRICS}
    per_track[t] = {m: np.stack([v.mean(axis=0) for v in per_seed[t][m]]) for m in METRICS}
    seed_summary[t] = [[dict(a["targets"][t]) for a in run_aggs] if t in ts else None
                       for run_aggs, ts in zip(aggs, run_targets)]
    summary[t] = []
    for seeds in seed_summary[t]:
      if seeds is None:
        summary[t].append(None)
      elif len(seeds) == 1:
        summary[t].append(dict(seeds[0], seeds=1))
      else:
        summary[t].append(_seed_mean_summary(seeds, METRICS))
    paired[t] = [None]
    for i in range(1, len(runs)):
      if summary[t][0] is None or summary[t][i] is None:
        paired[t].append(None)
      else:
        paired[t].append(stats.paired_stats(
            per_seed[t]["SDR"][0], per_seed[t]["SDR"][i], n_resamples=n_resamples, seed=seed,
            confidence=confidence, tie_tolerance=tie_tolerance))
    have = [i for i, s in enumerate(summary[t]) if s is not None]
    counts = stats.best_counts(per_track[t]["SDR"][have])
    best[t] = [counts[have.index(i)] if i in have else 0 for i in range(len(runs))]

  curve_data, member_curves = [], []
  for r in runs:
    curve_data.append(scalars.read_scalars(r.workdir, notes) if curves and r.workdir else {})
    members = {}
    if curves and r.members:
      for s in r.seeds:
        member = s.name.split("/")[0]
        if s.workdir and member not in members:
          members[member] = scalars.read_scalars(s.workdir, notes)
    member_curves.append(members)
  settings = {"n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence),
              "tie_tolerance_db": float(tie_tolerance), "common_tracks": bool(common_tracks)}
  if any(r.num_seeds > 1 for r in runs):
    settings["seeds"] = {r.label: r.num_seeds for r in runs}
    settings["ci_method"] = stats.SEEDS_AND_TRACKS
    settings["ci_description"] = stats.SEEDS_AND_TRACKS_TEXT
  return Comparison(runs=runs, method=method, protocol=protocol, split=split, tracks=tracks,
                    dropped=dropped, targets=targets, per_track=per_track, summary=summary,
                    paired=paired, best=best, curves=curve_data, settings=settings,
                    warnings=notes, per_seed=per_seed, seed_summary=seed_summary,
                    member_curves=member_curves)


def _check_same_tracks(run: Run, what: str) -> None:
  """The seeds of a run must have scored the same tracks."""
  if run.num_seeds < 2:
    return
  sets = [set(s.tracks) for s in run.seeds]
  union = set.union(*sets)
  if all(s == union for s in sets):
    return
  lines = [f"{s.name} ({s.eval_dir}): {len(s.tracks)} tracks"
           + (f", missing {', '.join(sorted(union - st))}" if union - st else "")
           for s, st in zip(run.seeds, sets)]
  raise CompareError(f"{what}: its seeds scored different tracks (every seed of a run must "
                     "score the same tracks; evaluate the missing ones):\n  " + "\n  ".join(lines))


def _run_targets(run: Run, aggs, what: str) -> List[str]:
  """The sources every seed of a run scored (an error when its seeds disagree)."""
  per_seed = [set(a["targets"]) for a in aggs]
  if any(s != per_seed[0] for s in per_seed):
    raise CompareError(f"{what}: its seeds scored different sources: " + "; ".join(
        f"{s.name}: {', '.join(sorted(ts)) or 'none'}" for s, ts in zip(run.seeds, per_seed)))
  return [t for t in sources.TARGETS if t in per_seed[0]]
