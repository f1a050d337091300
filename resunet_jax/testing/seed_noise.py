"""Simulated per-seed, per-track SDRs of two configurations, to measure the comparison's intervals.

The model (all in dB): track t of seed s of configuration X scores

  Y_X[s, t] = base_t + effect_X,t + offset_X,s + noise_X,s,t

``base_t`` (sd ``track_sd``) is how hard the track is, shared by both configurations (it cancels
in the paired difference); ``effect`` is the second configuration's per-track true difference, of
sd ``effect_sd`` around its median ``shift`` (the first configuration has none); ``offset`` (sd
``seed_sd``) moves every track of a seed together (a lucky initialisation); ``noise`` (sd
``noise_sd``) is the seed-by-track variation. The true median difference over the tracks is
``shift``: an interval for it should cover ``shift`` in about ``confidence`` of the instances.

``coverage`` runs many instances through ``resunet_jax.compare.stats.paired_stats`` (what
``resunet-compare`` computes); bench/bench_seed_bootstrap.py prints the figures that
``resunet_jax.compare.stats`` quotes, tests/test_compare_seeds.py checks a smaller run.
"""
import numpy as np

from resunet_jax.compare import stats


def simulate(rng, *, tracks=20, seeds=4, track_sd=3.0, seed_sd=0.3, noise_sd=0.5, effect_sd=0.3,
             shift=0.0):
  """(first, other): (seeds, tracks) arrays of per-track SDRs of the two configurations."""
  base = rng.normal(5.0, track_sd, tracks)
  effect = rng.normal(0.0, effect_sd, tracks)
  effect += shift - np.median(effect)  # the true median difference is exactly ``shift``

  def run(delta):
    return (base + delta + rng.normal(0.0, seed_sd, (seeds, 1))
            + rng.normal(0.0, noise_sd, (seeds, tracks)))

  return run(0.0), run(effect)


def coverage(instances, *, seed=0, n_resamples=1000, confidence=0.95, first_seed_only=False,
             **model):
  """(fraction of instances whose interval covers ``shift``, fraction whose interval lies above
  0) over ``instances`` simulated comparisons; ``first_seed_only`` compares seed 0 of each
  configuration alone (what one training run per configuration gives)."""
  rng = np.random.default_rng(seed)
  shift = model.get("shift", 0.0)
  covered = above = 0
  for k in range(instances):
    first, other = simulate(rng, **model)
    if first_seed_only:
      first, other = first[:1], other[:1]
    p = stats.paired_stats(first, other, n_resamples=n_resamples, seed=k, confidence=confidence)
    covered += p["ci_low"] <= shift <= p["ci_high"]
    above += p["ci_low"] > 0
  return covered / instances, above / instances
