"""On a GPU or TPU (skipped on CPU): the layers' custom gradients use XLA's own ops there (the C++
CPU kernels must not appear) and equal plain autodiff of XLA's convolutions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resunet_jax import cpu_kernels, layers

# conftest.py hides CUDA from the test session unless CUDA_VISIBLE_DEVICES is set: run these with
# e.g. CUDA_VISIBLE_DEVICES=0 python -m pytest tests/test_accelerator.py
pytestmark = pytest.mark.skipif(
    jax.default_backend() == "cpu",
    reason="needs a GPU or TPU as JAX's default backend (set CUDA_VISIBLE_DEVICES for a GPU)")

HIGHEST = lax.Precision.HIGHEST
TARGETS = (cpu_kernels.KERNEL_GRAD_TARGET, cpu_kernels.CONV_TARGET, cpu_kernels.FLIP_SWAP_TARGET,
           cpu_kernels.INPUT_GRAD_TARGET, cpu_kernels.DEPTHWISE_TARGET)


def _loss(conv):
  return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))


@pytest.mark.parametrize("channels", [(8, 32), (128, 128)])
def test_conv_gradients_equal_xla(channels):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 12, 16, channels[0])), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3) + channels) * 0.1, jnp.float32)
  ours = jax.jit(jax.grad(_loss(lambda x, k: layers.conv2d_same(x, k, HIGHEST)), argnums=(0, 1)))
  ref = jax.jit(jax.grad(_loss(lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)),
      argnums=(0, 1)))
  hlo = ours.lower(x, k).as_text()
  assert not any(t in hlo for t in TARGETS)
  for g, w in zip(ours(x, k), ref(x, k)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-4 * np.abs(np.asarray(w)).max())


def test_depthwise_gradients_equal_xla():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 12, 16, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 32)), jnp.float32)
  ours = jax.jit(jax.grad(_loss(layers.depthwise_conv3x3), argnums=(0, 1)))
  ref = jax.jit(jax.grad(_loss(layers._depthwise_conv3x3_xla), argnums=(0, 1)))
  assert not any(t in ours.lower(x, k).as_text() for t in TARGETS)
  for g, w in zip(ours(x, k), ref(x, k)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
