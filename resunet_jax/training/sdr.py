"""A fast, jit-compatible SDR for validation during training (museval stays in eval.py).

Per window of ``window`` samples (1 s at 44.1 kHz, like museval's default), summed over both
channels: SDR = 10 log10(sum s^2 / sum (s_hat - s)^2) -- in museval's v4 "images" mode the error
terms of the decomposition add up to exactly s_hat - s, so this is its SDR (REFERENCE §13). A window
where the reference or the estimate is silent is NaN (museval skips it); the trailing partial window
is dropped. A segment shorter than one window is one window.
"""
import jax.numpy as jnp


def windowed_sdr(reference, estimate, window=44100):
  """(..., L, C) reference and estimate -> (..., W) SDR in dB per window (NaN where undefined)."""
  length = reference.shape[-2]
  window = min(int(window), length)
  num_windows = length // window
  shape = reference.shape[:-2] + (num_windows, window * reference.shape[-1])
  ref = reference[..., :num_windows * window, :].astype(jnp.float32).reshape(shape)
  est = estimate[..., :num_windows * window, :].astype(jnp.float32).reshape(shape)
  signal = jnp.sum(jnp.square(ref), axis=-1)
  error = jnp.sum(jnp.square(est - ref), axis=-1)
  defined = (signal > 0) & (jnp.sum(jnp.square(est), axis=-1) > 0)
  sdr = 10.0 * (jnp.log10(jnp.where(defined, signal, 1.0))
                - jnp.log10(jnp.maximum(error, jnp.finfo(jnp.float32).tiny)))
  return jnp.where(defined, sdr, jnp.nan)


def segment_sdr(reference, estimate, window=44100):
  """(..., L, C) -> (...): the median over a segment's windows (museval's per-track statistic)."""
  return jnp.nanmedian(windowed_sdr(reference, estimate, window), axis=-1)
