"""Coverage and power of resunet-compare's intervals with several seeds per run (a simulation).

Simulated comparisons (``resunet_jax.testing.seed_noise``: per-track SDRs with a track spread, a
per-seed offset, seed-by-track noise and per-track true differences) go through
``resunet_jax.compare.stats.paired_stats``, the statistics ``resunet-compare`` reports. Prints, per
setting, how often the 95 % interval covers the true median difference (0) with the two-level
bootstrap (several seeds), without its sqrt(R/(R-1)) scaling, with the first seed of each run only
(one training run per configuration), and how often a true shift is detected (interval above 0).
Asserts nothing; the figures are quoted in resunet_jax/compare/stats.py.

  python bench/bench_seed_bootstrap.py               # 200 instances per setting (~1 min)
  python bench/bench_seed_bootstrap.py --instances=50
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resunet_jax.compare import stats  # pylint: disable=g-import-not-at-top,wrong-import-position
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from resunet_jax.testing import seed_noise


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--instances", type=int, default=200)
  p.add_argument("--resamples", type=int, default=1000)
  args = p.parse_args()
  n, b = args.instances, args.resamples
  settings = [("20 tracks, 4 seeds, seed offset sd 0.3, noise sd 0.5", {}),
              ("seed offset sd 0.6", dict(seed_sd=0.6)),
              ("2 seeds", dict(seeds=2)),
              ("8 seeds", dict(seeds=8)),
              ("seed offset sd 0.1, noise sd 0.3", dict(seed_sd=0.1, noise_sd=0.3))]
  print(f"95 % interval covers the true difference 0 ({n} instances, {b} resamples each):")
  print(f"{'setting':55s} {'seeds+tracks':>12s} {'unscaled':>9s} {'1 seed':>7s}")
  for name, model in settings:
    start = time.time()
    two_level = seed_noise.coverage(n, n_resamples=b, **model)[0]
    scale = stats._seed_scaled  # pylint: disable=protected-access
    stats._seed_scaled = lambda y: y  # pylint: disable=protected-access
    try:
      unscaled = seed_noise.coverage(n, n_resamples=b, **model)[0]
    finally:
      stats._seed_scaled = scale  # pylint: disable=protected-access
    one_seed = seed_noise.coverage(n, n_resamples=b, first_seed_only=True, **model)[0]
    print(f"{name:55s} {two_level:12.3f} {unscaled:9.3f} {one_seed:7.3f}   "
          f"({time.time() - start:.1f} s)")
  print("\ndetected (interval above 0), seed offset sd 0.6, 4 seeds:")
  for shift in (0.5, 1.0, 2.0, 3.0):
    print(f"  true shift {shift:.1f} dB: "
          f"{seed_noise.coverage(n, n_resamples=b, seed_sd=0.6, shift=shift)[1]:.3f}")


if __name__ == "__main__":
  main()
