"""Oracle estimates: ideal masks (``resunet_jax.masks.ORACLES``) of the true stems, as upper bounds.

Each mask is computed from a stem's STFT and the mixture's (n_fft 2048, hop 441: the paper model's
front end, ``resunet_jax.spectral``), applied to the mixture's STFT and inverted. The formulas live
in :mod:`resunet_jax.masks`; this module runs them over whole tracks, one channel at a time. JAX is
imported only when an oracle is computed (scoring workers import this package without it).
"""
import numpy as np

ORACLE_N_FFT, ORACLE_HOP = 2048, 441


def check_kinds(kinds):
  """Raises ValueError for a name that is not a key of ``masks.ORACLES`` (imports JAX if any)."""
  for kind in kinds:
    from resunet_jax import masks  # pylint: disable=g-import-not-at-top
    if kind not in masks.ORACLES:
      raise ValueError(f"unknown oracle {kind!r}; expected one of {tuple(masks.ORACLES)}")


def oracle_estimates(mixture, stems, targets, kind, n_fft=ORACLE_N_FFT, hop=ORACLE_HOP):
  """({target: (L, C) float32}, {target: fraction of bins with |S| > |X|}) for one ideal mask."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import masks  # pylint: disable=g-import-not-at-top
  from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
  check_kinds([kind])
  length, channels = mixture.shape
  estimates, above_one = {}, {}
  for t in targets:
    out = np.empty((length, channels), np.float32)
    above = 0
    for c in range(channels):  # one channel at a time: full-track spectrograms are large
      x = spectral.stft(jnp.asarray(mixture[:, c], jnp.float32), n_fft, hop)  # (T, F)
      s = spectral.stft(jnp.asarray(stems[t][:, c], jnp.float32), n_fft, hop)
      above += int(jnp.sum(jnp.abs(s) > jnp.abs(x)))
      y = masks.oracle_mask(kind, x, s)
      out[:, c] = np.asarray(spectral.istft(y, n_fft, hop, length))
      del x, s, y
    estimates[t] = out
    frames = spectral.num_frames(length, hop)
    above_one[t] = above / float(channels * frames * (n_fft // 2 + 1))
  return estimates, above_one
