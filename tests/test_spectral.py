"""STFT / ISTFT as the original computes them (REFERENCE §2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resunet_jax import spectral

CONFIGS = [(2048, 441), (512, 110)]


def _numpy_stft(x, n_fft, hop):
  """Independent re-statement: reflect pad, frame, periodic Hann, rfft; (T, F) layout."""
  pad = n_fft // 2
  xp = np.pad(x, (pad, pad), mode="reflect")
  frames = 1 + len(x) // hop
  w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  return np.stack([np.fft.rfft(xp[t * hop:t * hop + n_fft] * w) for t in range(frames)])


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
def test_stft_matches_numpy_restatement(n_fft, hop):
  x = np.random.default_rng(0).standard_normal(10_000)
  with jax.enable_x64(True):
    got = np.asarray(spectral.stft(jnp.asarray(x), n_fft, hop))
  want = _numpy_stft(x, n_fft, hop)
  assert got.shape == (1 + 10_000 // hop, n_fft // 2 + 1)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
def test_stft_istft_match_torch(n_fft, hop):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).standard_normal((3, 7_777))
  window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
  ref = torch.stft(torch.tensor(x), n_fft, hop, n_fft, window, center=True, pad_mode="reflect",
                   normalized=False, onesided=True, return_complex=True)
  with jax.enable_x64(True):
    spec = spectral.stft(jnp.asarray(x), n_fft, hop)
    np.testing.assert_allclose(np.asarray(spec), np.swapaxes(ref.numpy(), 1, 2), atol=1e-10)
    y = np.asarray(spectral.istft(spec, n_fft, hop, 7_777))
  y_ref = torch.istft(ref, n_fft, hop, n_fft, window, center=True, length=7_777).numpy()
  np.testing.assert_allclose(y, y_ref, atol=1e-12)


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
@pytest.mark.parametrize("signal", ["noise", "silence"])
def test_round_trip_float32(n_fft, hop, signal):
  length = 3 * 44100 + 17  # not a multiple of the hop
  x = np.random.default_rng(2).standard_normal((2, length)).astype(np.float32)
  if signal == "silence":
    x[:] = 0.0
  y = jax.jit(lambda v: spectral.istft(spectral.stft(v, n_fft, hop), n_fft, hop, length))(x)
  y = np.asarray(y)
  assert y.shape == x.shape and y.dtype == np.float32
  assert np.all(np.isfinite(y))
  assert np.max(np.abs(y - x)) <= 1e-5


def test_all_zero_input_has_no_nan_in_values_or_gradients():
  x = jnp.zeros((1, 4410), jnp.float32)

  def loss(v):
    mag, cos, sin = spectral.magnitude_phase(spectral.stft(v, 512, 110))
    return jnp.sum(mag) + jnp.sum(cos) + jnp.sum(sin)

  value, grad = jax.value_and_grad(loss)(x)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_magnitude_phase_epsilon_behaviour():
  spec = jnp.asarray([0.0 + 0.0j, 3.0 + 4.0j, 1e-7 + 0.0j], jnp.complex64)
  mag, cos, sin = spectral.magnitude_phase(spec)
  # Exactly zero: magnitude 1e-5 and the (0, 0) "phase"; tiny bins: |phase| < 1.
  # mag = sqrt(max(|X|^2, 1e-10)) never drops below 1e-5.
  np.testing.assert_allclose(np.asarray(mag), [1e-5, 5.0, 1e-5], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(cos), [0.0, 0.6, 0.01], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sin), [0.0, 0.8, 0.0], atol=1e-7)


def test_window_envelope_is_not_constant_and_never_clamped_in_kept_region():
  # hop does not divide n_fft, so the envelope varies; REFERENCE §2.3 measures 1.37-1.74.
  env = spectral.window_envelope(1 + 132300 // 441, 2048, 441)
  kept = env[1024:1024 + 132300]
  assert 1.36 < kept.min() < 1.38 and 1.73 < kept.max() < 1.75


def test_too_short_input_is_refused():
  with pytest.raises(ValueError, match="reflect padding"):
    spectral.stft(jnp.zeros((1, 1024)), 2048, 441)
