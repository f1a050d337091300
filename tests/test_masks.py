"""Mask formulas on hand-made inputs (REFERENCE §3)."""
import jax.numpy as jnp
import numpy as np
import pytest

from resunet_jax import masks


def _mix(mag, angle):
  mag = jnp.asarray(mag, jnp.float32)
  return mag, jnp.cos(jnp.asarray(angle, jnp.float32)), jnp.sin(jnp.asarray(angle, jnp.float32))


def test_decouple_plus_rotates_the_phase_exactly_and_can_exceed_one():
  mag, cos, sin = _mix([2.0, 0.5], [0.3, -1.2])
  phase = np.array([0.7, 2.5])
  scale = 3.0  # tanh(p) scale does not matter after normalisation, only the direction
  logits = jnp.asarray(np.stack([
      [0.0, 1.0],  # m: sigmoid 0.5 and 0.731
      np.arctanh(np.cos(phase) / scale),
      np.arctanh(np.sin(phase) / scale),
      [1.5, -0.1],  # Q, unbounded
  ], axis=-1), jnp.float32)
  y = np.asarray(masks.apply_mask("decouple_plus", logits, mag, cos, sin))
  sig = 1 / (1 + np.exp(-np.array([0.0, 1.0])))
  want_mag = np.maximum(np.array([2.0, 0.5]) * sig + np.array([1.5, -0.1]), 0)
  np.testing.assert_allclose(np.abs(y), want_mag, rtol=1e-6)
  np.testing.assert_allclose(np.angle(y), np.angle(np.exp(1j * (np.array([0.3, -1.2]) + phase))),
                             atol=1e-6)
  assert np.abs(y[0]) / 2.0 > 1.0  # effective magnitude mask 1.25 > 1


def test_decouple_plus_output_magnitude_is_relu_clipped():
  mag, cos, sin = _mix([1.0], [0.0])
  logits = jnp.asarray([[0.0, 1.0, 0.0, -5.0]], jnp.float32)
  assert float(jnp.abs(masks.apply_mask("decouple_plus", logits, mag, cos, sin))[0]) == 0.0


def test_bounded_additive_term():
  mag, cos, sin = _mix([1.0], [0.0])
  logits = jnp.asarray([[-30.0, 1.0, 0.0, 100.0]], jnp.float32)  # sigmoid ~0, Q -> tanh -> 1
  bounded = masks.apply_mask("decouple_plus_bounded", logits, mag, cos, sin)
  free = masks.apply_mask("decouple_plus", logits, mag, cos, sin)
  np.testing.assert_allclose(np.abs(np.asarray(bounded)), [1.0], rtol=1e-6)
  np.testing.assert_allclose(np.abs(np.asarray(free)), [100.0], rtol=1e-6)


def test_zero_phase_logits_give_exactly_zero_output():
  # The Nyquist bin: its logits are zero padding, so p_r = p_i = 0 and the output is exactly 0.
  mag, cos, sin = _mix([3.0], [1.0])
  for kind in ("decouple_plus", "decouple_plus_bounded", "decouple"):
    logits = jnp.zeros((1, masks.num_outputs(kind)), jnp.float32)
    assert complex(masks.apply_mask(kind, logits, mag, cos, sin)[0]) == 0j


def test_decouple_without_additive_term_is_bounded_by_the_mixture():
  mag, cos, sin = _mix([2.0], [0.4])
  logits = jnp.asarray([[50.0, 0.3, -0.2]], jnp.float32)
  y = masks.apply_mask("decouple", logits, mag, cos, sin)
  assert float(jnp.abs(y)[0]) <= 2.0 + 1e-6


def test_irm_keeps_the_mixture_phase():
  mag, cos, sin = _mix([2.0], [0.4])
  y = np.asarray(masks.apply_mask("irm", jnp.asarray([[0.0]], jnp.float32), mag, cos, sin))
  np.testing.assert_allclose(y, [1.0 * np.exp(0.4j)], rtol=1e-6)


def test_cirm_is_a_complex_multiplication():
  mag, cos, sin = _mix([2.0], [0.4])
  a, b = 0.3, -0.8
  y = np.asarray(masks.apply_mask("cirm", jnp.asarray([[a, b]], jnp.float32), mag, cos, sin))
  want = (np.tanh(a) + 1j * np.tanh(b)) * 2.0 * np.exp(0.4j)
  np.testing.assert_allclose(y, [want], rtol=1e-6)


def test_wrong_logit_count_and_unknown_mask():
  mag, cos, sin = _mix([1.0], [0.0])
  with pytest.raises(ValueError, match="takes 4 logits"):
    masks.apply_mask("decouple_plus", jnp.zeros((1, 3)), mag, cos, sin)
  with pytest.raises(ValueError, match="unknown mask"):
    masks.num_outputs("ideal")


def test_magnitude_plus_exceeds_one_and_keeps_the_mixture_phase():
  mag, cos, sin = _mix([2.0, 0.01], [0.4, -1.0])
  logits = jnp.asarray([[0.0, 1.0], [-3.0, 0.5]], jnp.float32)
  y = np.asarray(masks.apply_mask("magnitude_plus", logits, mag, cos, sin))
  want = np.maximum(np.array([2.0, 0.01]) / (1 + np.exp([-0.0, 3.0])) + np.tanh([1.0, 0.5]), 0)
  np.testing.assert_allclose(np.abs(y), want, rtol=1e-6)
  np.testing.assert_allclose(np.angle(y), [0.4, -1.0], atol=1e-6)
  assert np.abs(y[1]) / 0.01 > 1  # the effective mask exceeds 1 where |X| is small


def test_a_registered_mask_sizes_the_head_and_is_checked_by_the_model():
  from resunet_jax import models  # pylint: disable=g-import-not-at-top
  assert masks.num_outputs("magnitude_plus") == 2
  model = models.build_model("resunet143_subbandtime", mask="magnitude_plus", num_sources=2)
  assert model.head_channels == 2 * 2 * 2 * 4  # sources x channels x K x subbands
  with pytest.raises(ValueError, match="already registered"):
    masks.register("irm", 1)(lambda *a: a)
