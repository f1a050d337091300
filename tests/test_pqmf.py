"""PQMF subband analysis / synthesis (REFERENCE §5) and the library's own filter bank."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_utils as pu
from resunet_jax import pqmf


def _snr_db(x, y):
  return 10 * np.log10(np.sum(x ** 2) / np.sum((y - x) ** 2))


@pytest.mark.parametrize("length", [132300, 1000, 1001, 1002, 1003])
def test_lengths(length):
  ana, syn = pqmf.designed_filters()
  u = pqmf.analysis(jnp.zeros((2, length)), ana)
  assert u.shape == (2, 4, (length + 60) // 4 + 1)
  assert pqmf.analysis_length(length) == u.shape[-1]
  y = pqmf.synthesis(u, syn)
  assert y.shape == (2, length - length % 4)


def test_designed_bank_reconstructs_with_zero_delay():
  ana, syn = pqmf.designed_filters()
  x = np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32)
  y = np.asarray(jax.jit(lambda v: pqmf.round_trip(v, ana, syn))(x))
  assert _snr_db(x, y) >= 100.0  # float32: measured ~130 dB
  # Zero delay: a one-sample shift would be a catastrophic error.
  assert _snr_db(x[:, 1:], y[:, :-1]) < 0.0
  with jax.enable_x64(True):
    y64 = np.asarray(pqmf.round_trip(jnp.asarray(x, jnp.float64), ana, syn))
  assert _snr_db(x.astype(np.float64), y64) >= 250.0  # perfect reconstruction (measured 303 dB)


def test_lattice_prototype_reconstructs_for_any_angles():
  # Perfect reconstruction is structural (power-complementary lattices), not a result of tuning.
  angles = np.random.default_rng(3).uniform(-np.pi, np.pi, (2, 8))
  ana, syn = pqmf.filters_from_prototype(pqmf.prototype_from_angles(angles))
  x = np.random.default_rng(4).standard_normal(8000)
  with jax.enable_x64(True):
    y = np.asarray(pqmf.round_trip(jnp.asarray(x), ana, syn))
  assert _snr_db(x, y) >= 250.0


def test_designed_bands_split_the_spectrum_in_quarters():
  ana, _ = pqmf.designed_filters()
  w = np.linspace(0, np.pi, 4096)
  response = np.abs(np.exp(-1j * np.outer(w, np.arange(64))) @ ana.T) ** 2
  for k in range(4):
    band = (w >= k * np.pi / 4) & (w < (k + 1) * np.pi / 4)
    assert response[band, k].sum() / response[:, k].sum() > 0.9
    far = (w < k * np.pi / 4 - np.pi / 8) | (w > (k + 1) * np.pi / 4 + np.pi / 8)
    assert 10 * np.log10(response[far, k].max() / response[:, k].max()) < -35.0


def test_authors_filters_closed_forms_and_kernels():
  # The authors' filters, from the frozen conv kernels every released subband checkpoint carries
  # (tests/fixtures/parity/pqmf_frozen.npz; their .mat files are not redistributed here).
  frozen = pu.pqmf_kernels()
  f, h = pqmf.filters_from_kernels(frozen["pqmf.ana_conv_filter.weight"],
                                   frozen["pqmf.syn_conv_filter.weight"])
  x = np.random.default_rng(5).standard_normal(1001)
  with jax.enable_x64(True):
    u = np.asarray(pqmf.analysis(jnp.asarray(x[None]), f))[0]
    y = np.asarray(pqmf.synthesis(jnp.asarray(u[None]), h))[0]
  ls = (1001 + 60) // 4 + 1
  # u_k[t] = 1/4 sum_i f[k, i] x[4t + 3 - i]
  full = np.stack([np.convolve(x, f[k]) for k in range(4)])
  idx = 4 * np.arange(ls) + 3
  want_u = np.where(idx < full.shape[1], full[:, np.minimum(idx, full.shape[1] - 1)], 0) / 4
  np.testing.assert_allclose(u, want_u, atol=1e-12)
  # y[n] = 4 sum_k sum_s h[k, n + 60 - 4 s] u_k[s]
  want_y = np.zeros(4 * ls - 64)
  for n in range(len(want_y)):
    s = np.arange(ls)
    j = n + 60 - 4 * s
    ok = (j >= 0) & (j < 64)
    want_y[n] = 4 * sum(np.sum(h[k, j[ok]] * u[k, s[ok]]) for k in range(4))
  np.testing.assert_allclose(y, want_y, atol=1e-12)
  # The authors' bank: ~103 dB round trip, zero delay.
  assert 100.0 <= _snr_db(x[:1000], y) <= 106.0
  # kernels_from_filters inverts filters_from_kernels: the checkpoints' tensors come back.
  ana_w, syn_w = pqmf.kernels_from_filters(f, h)
  np.testing.assert_allclose(ana_w, frozen["pqmf.ana_conv_filter.weight"], atol=1e-7)
  np.testing.assert_allclose(syn_w, frozen["pqmf.syn_conv_filter.weight"], atol=1e-7)
