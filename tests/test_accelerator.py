"""On a GPU or TPU (skipped on CPU): the model is plain XLA there too -- forward-mode and reverse-mode
autodiff run on the accelerator, and the optional "cpu" convolution backend computes the same
values as XLA's own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resunet_jax import models

# conftest.py hides CUDA from the test session unless CUDA_VISIBLE_DEVICES is set: run these with
# e.g. CUDA_VISIBLE_DEVICES=0 python -m pytest tests/test_accelerator.py
pytestmark = pytest.mark.skipif(
    jax.default_backend() == "cpu",
    reason="needs a GPU or TPU as JAX's default backend (set CUDA_VISIBLE_DEVICES for a GPU)")

SMALL = dict(width=0.25, levels=3, blocks_per_stage=1, center_blocks=1, precision="highest")


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_jvp_and_grad_run_on_the_accelerator_and_backends_agree(arch):
  model = models.build_model(arch, **SMALL)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 22_050, 2)) * 0.1
  t = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  f = jax.jit(lambda x: model.apply(variables, x))
  y, y_dot = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, t)
  g = jax.jit(jax.grad(lambda x: jnp.sum(f(x) ** 2)))(x)
  assert all(np.all(np.isfinite(np.asarray(a))) for a in (y, y_dot, g))
  # <grad, t> equals the directional derivative: forward and reverse mode agree.
  np.testing.assert_allclose(float(jnp.vdot(g, t)), float(2 * jnp.vdot(y, y_dot)), rtol=1e-3)
  y_cpu = jax.jit(lambda x: model.clone(conv_backend="cpu").apply(variables, x))(x)
  np.testing.assert_allclose(np.asarray(y_cpu), np.asarray(y), atol=1e-4 * float(jnp.abs(y).max()))
