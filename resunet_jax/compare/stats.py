"""Paired statistics of per-track scores: the median difference, its bootstrap interval, W/T/L.

One seed per run. Per source, every run is compared with the FIRST run on the tracks both scored
with a finite SDR: d_i = SDR_i(run) - SDR_i(first run). Reported: the median of d (not the
difference of the two medians), a percentile bootstrap confidence interval for it, and win/tie/loss
counts: tracks with d > tol, |d| <= tol, d < -tol (``tie_tolerance`` tol, default 0 dB). ``best``
counts, among all runs, the tracks where a run's SDR is the highest alone (a shared maximum counts
for no run).

The bootstrap is ``scipy.stats.bootstrap`` (``method="percentile"``): ``n_resamples`` resamples of
the tracks with replacement, drawn by numpy's PCG64 generator seeded with ``seed`` afresh for every
comparison (``np.random.default_rng(seed)``), in batches of ``batch`` resamples; the interval runs
between the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled medians (numpy's
linear interpolation). These are the draws and the numbers of the hand-written loop it replaced
(checked to 1e-12 by tests/test_compare.py); scipy takes 18 ms for 10 000 resamples of 50 tracks,
as the loop did (15 ms, measured on the development machine's 2 cores).

Several seeds per run (``SEEDS_AND_TRACKS``). Run A has per-track SDRs Y_A[s, t] for its R_A seeds
s (independent trainings of one configuration) on tracks t, run B likewise. A track's score is its
mean over the run's seeds, and d_t = mean_s Y_B[s, t] - mean_s Y_A[s, t] (with one seed on both
sides: today's d). Reported: the median of d over the tracks where every seed of both runs has a
finite SDR, W/T/L of d, and a two-level bootstrap interval of that median: every resample draws
R_A of A's seeds and, independently, R_B of B's seeds with replacement (seeds are not paired: seed
k of A and seed k of B share nothing that the analysis may rely on), and T tracks with
replacement, the same tracks for both runs (paired by track); the statistic is the median over the
drawn tracks of the difference of the drawn seeds' means. ``scipy.stats.bootstrap`` does it: its
samples are the index sets (tracks, A's seeds, B's seeds), resampled independently, and the
statistic gathers the scores, so the draws are scipy's and a run with one seed adds no sample (both
runs with one seed: exactly the one-seed interval above).

What the interval means. Its width covers two things: which tracks happened to be in the test set,
and which seeds happened to be trained, i.e. where the median difference would fall if both
configurations were trained again with new seeds and scored on new tracks like these. The seed
level is learnt from R values: with few seeds (R = 4) its spread is rough (the plain bootstrap of a
mean of R values has variance (R - 1)/R s^2/R, 25 % too small at R = 4), so the drawn seeds'
deviations from the seed mean are scaled by sqrt(R / (R - 1)), the usual n/(n - 1) correction of
the plug-in variance (Davison & Hinkley 1997 discuss resampling such two-level data in their
section 3.8): the resampled seed mean then varies as s^2/R, s the standard deviation over seeds
(ddof 1) that the table reports. The seed-by-track noise is counted at both levels, which makes the
interval somewhat conservative for it (Owen 2007, "The pigeonhole bootstrap", for crossed designs).

Measured with bench/bench_seed_bootstrap.py (a simulation, ``resunet_jax.testing.seed_noise``;
tests/test_compare_seeds.py repeats a smaller one): 20 tracks, 4 seeds per run, track SDRs spread
3 dB, a seed offset of sd 0.3 dB shared by all tracks of a seed, seed-by-track noise of sd 0.5 dB,
per-track true differences of sd 0.3 dB around a median of 0; 200 instances, 1000 resamples each.
The 95 % interval covered 0 in 94.0 % of them (without the sqrt(R/(R - 1)) scaling 89.5 %; the
one-seed interval of each run's first seed alone: 61.0 %). With a seed offset of sd 0.6 dB: 89.5 %
(88.0 %; one seed: 36.5 %): four seeds estimate a large seed variance roughly, so treat an interval
that ends near 0 as undecided. 2 seeds: 95.5 % (88.5 %), 8 seeds: 97.5 %. A true shift was detected
(interval above 0, seed offset 0.6 dB) in 99 % of the instances at 2 dB, 55 % at 1 dB, 26 % at
0.5 dB. With one seed on a side, that side's seed variation is unknown and not in the interval (the
comparison notes it).
"""
from typing import List, Tuple

import numpy as np
from scipy import stats as scipy_stats


def bootstrap_median_ci(diffs, n_resamples=10000, seed=0, confidence=0.95, batch=2000):
  """Percentile bootstrap interval of the median of ``diffs`` (resampling its entries).

  ``n_resamples`` samples of len(diffs) entries drawn with replacement by
  ``np.random.default_rng(seed)``, ``batch`` samples at a time (memory); the interval is the
  ((1 - confidence) / 2, (1 + confidence) / 2) quantiles of their medians (linear interpolation).
  Returns (low, high); NaN for no data, the value itself for one value (scipy needs two).
  """
  d = np.asarray(diffs, np.float64)
  if d.size == 0:
    return float("nan"), float("nan")
  if d.size == 1:  # every resample is the one value
    return float(d[0]), float(d[0])
  result = scipy_stats.bootstrap((d,), np.median, n_resamples=n_resamples, batch=batch,
                                 vectorized=True, axis=-1, confidence_level=confidence,
                                 method="percentile", rng=np.random.default_rng(seed))
  ci = result.confidence_interval
  return float(ci.low), float(ci.high)


def _seed_scaled(y):
  """Seeds' deviations from their mean scaled by sqrt(R / (R - 1)) (see the module docstring)."""
  r = y.shape[0]
  if r < 2:
    return y
  mean = y.mean(axis=0)
  return mean + np.sqrt(r / (r - 1.0)) * (y - mean)


def seed_track_median_ci(first, other, n_resamples=10000, seed=0, confidence=0.95, batch=2000
                         ) -> Tuple[float, float]:
  """Two-level percentile bootstrap interval of median_t(mean_s other[s, t] - mean_s first[s, t]).

  ``first`` (R_A, T) and ``other`` (R_B, T): per-seed per-track scores, all finite. Seeds of each
  run and tracks are resampled with replacement, independently; the tracks are the same for both
  runs (see the module docstring). A level with one member is not resampled; with one seed on both
  sides this is ``bootstrap_median_ci`` of the differences, draw for draw.
  """
  first, other = np.asarray(first, np.float64), np.asarray(other, np.float64)
  tracks = first.shape[1]
  if tracks == 0:
    return float("nan"), float("nan")
  a, b = _seed_scaled(first), _seed_scaled(other)
  samples, roles = [], []
  for role, n in (("tracks", tracks), ("first", a.shape[0]), ("other", b.shape[0])):
    if n >= 2:  # scipy resamples samples of two or more
      samples.append(np.arange(n))
      roles.append(role)
  d = b.mean(axis=0) - a.mean(axis=0)
  if not samples:
    return float(d[0]), float(d[0])

  def statistic(*index, axis=-1):
    del axis  # the indices come as (batch, n) arrays; the last axis is the resample
    drawn = dict(zip(roles, index))
    mean_a = a[drawn["first"]].mean(axis=-2) if "first" in drawn else a.mean(axis=0)
    mean_b = b[drawn["other"]].mean(axis=-2) if "other" in drawn else b.mean(axis=0)
    diff = mean_b - mean_a
    if "tracks" in drawn:
      t = drawn["tracks"]
      diff = np.take_along_axis(np.broadcast_to(diff, t.shape[:-1] + (tracks,)), t, axis=-1)
    return np.median(diff, axis=-1)

  result = scipy_stats.bootstrap(tuple(samples), statistic, n_resamples=n_resamples,
                                 batch=batch, vectorized=True, axis=-1, paired=False,
                                 confidence_level=confidence, method="percentile",
                                 rng=np.random.default_rng(seed))
  ci = result.confidence_interval
  return float(ci.low), float(ci.high)


TRACKS = "tracks"  # one seed on both sides: the tracks are resampled
SEEDS_AND_TRACKS = "seeds+tracks"  # the two-level bootstrap
SEEDS_AND_TRACKS_TEXT = (
    "two-level percentile bootstrap: every resample draws each run's seeds (independently, "
    "deviations from the seed mean scaled by sqrt(R/(R-1))) and the tracks (the same for both "
    "runs) with replacement; the interval covers seed-to-seed and track-to-track variation")


def paired_stats(first, other, *, n_resamples=10000, seed=0, confidence=0.95, tie_tolerance=0.0
                 ) -> dict:
  """``other - first`` per track: median, bootstrap CI, W/T/L.

  ``first`` and ``other`` are per-track scores (T,) of one seed, or (R, T) of R seeds (a track's
  score: its mean over seeds). Tracks where any seed of either run is not finite are left out.
  ``ci_method`` is ``TRACKS`` with one seed on both sides (``bootstrap_median_ci``), else
  ``SEEDS_AND_TRACKS`` (``seed_track_median_ci``)."""
  first = np.atleast_2d(np.asarray(first, np.float64))
  other = np.atleast_2d(np.asarray(other, np.float64))
  ok = np.all(np.isfinite(first), axis=0) & np.all(np.isfinite(other), axis=0)
  first, other = first[:, ok], other[:, ok]
  d = other.mean(axis=0) - first.mean(axis=0)
  if first.shape[0] == 1 and other.shape[0] == 1:
    method = TRACKS
    low, high = bootstrap_median_ci(d, n_resamples, seed, confidence)
  else:
    method = SEEDS_AND_TRACKS
    low, high = seed_track_median_ci(first, other, n_resamples, seed, confidence)
  return {"pairs": int(d.size), "median_diff": float(np.median(d)) if d.size else float("nan"),
          "ci_low": low, "ci_high": high, "wins": int(np.sum(d > tie_tolerance)),
          "ties": int(np.sum(np.abs(d) <= tie_tolerance)),
          "losses": int(np.sum(d < -tie_tolerance)), "seeds": [first.shape[0], other.shape[0]],
          "ci_method": method}


def seed_spread(per_seed) -> dict:
  """Mean, standard deviation (ddof 1; NaN for one seed), min and max over seeds of per-seed
  values (NaN seeds left out)."""
  v = np.asarray(per_seed, np.float64)
  v = v[np.isfinite(v)]
  nan = float("nan")
  if v.size == 0:
    return {"mean": nan, "sd": nan, "min": nan, "max": nan}
  return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else nan,
          "min": float(v.min()), "max": float(v.max())}


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
