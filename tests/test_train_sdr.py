"""The validation SDR (jit, windowed) is museval's SDR (REFERENCE §7.1, §13)."""
import jax
import numpy as np
import pytest

from resunet_jax.training import sdr


def test_windowed_sdr_matches_museval_per_window():
  museval = pytest.importorskip("museval")
  rng = np.random.default_rng(0)
  rate, seconds = 44100, 3
  reference = rng.standard_normal((rate * seconds + 1000, 2)).astype(np.float32) * 0.1
  estimate = reference + rng.standard_normal(reference.shape).astype(np.float32) * \
      np.linspace(0.01, 0.2, len(reference), dtype=np.float32)[:, None]
  estimate[rate:2 * rate] = 0.0  # a silent estimate window: NaN, as in museval
  sdr_ref, _, _, _ = museval.evaluate(reference[None], estimate[None], win=rate, hop=rate)
  ours = np.asarray(jax.jit(sdr.windowed_sdr, static_argnums=2)(reference, estimate, rate))
  assert ours.shape == (seconds,)  # the trailing 1000 samples are dropped, like museval
  np.testing.assert_array_equal(np.isnan(ours), np.isnan(sdr_ref[0]))
  finite = ~np.isnan(ours)
  np.testing.assert_allclose(ours[finite], sdr_ref[0][finite], atol=1e-3)
  assert float(sdr.segment_sdr(reference, estimate, rate)) == pytest.approx(
      float(np.nanmedian(sdr_ref[0])), abs=1e-3)


def test_short_segment_is_one_window_and_perfect_estimate_is_finite():
  x = np.sin(np.arange(1000, dtype=np.float32))[:, None].repeat(2, axis=1)
  assert sdr.windowed_sdr(x, 0.5 * x, 44100).shape == (1,)
  np.testing.assert_allclose(float(sdr.segment_sdr(x, 0.5 * x, 44100)), 20 * np.log10(2), rtol=1e-5)
  assert np.isfinite(float(sdr.segment_sdr(x, x, 44100)))
  assert np.isnan(float(sdr.segment_sdr(np.zeros_like(x), x, 44100)))
