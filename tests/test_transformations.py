"""Every JAX transformation works on ``model.apply``, for every architecture, both conv backends,
the frequency-folded layout (what TPUs run) and rematerialisation.

The model is plain Flax/XLA (no custom_vjp), so forward mode (jvp, jacfwd, linearize), reverse
mode, their compositions (Hessian-vector products, grad of grad) and vmap all apply. The checks
compare the transformations with each other: <u, J t> from forward mode equals <J^T u, t> from
reverse mode, the Hessian-vector product is symmetric, vmap equals the batched call. They run in
float64: the masks (phase normalisation, relu) and the magnitude's division make the map
ill-conditioned at a few bins, and float32 rounding alone moves such inner products by ~1e-3
(measured 2.6e-3 for the MobileNet), while in float64 the identities hold to ~1e-14.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resunet_jax import folding
from resunet_jax import models

TINY = dict(width=0.125, levels=2, blocks_per_stage=1, center_blocks=1, num_sources=2)
# (architecture, variant): the variant names the runtime options of the model.
VARIANTS = {
    "xla": dict(conv_backend="xla", layout="natural"),
    "cpu": dict(conv_backend="cpu", layout="natural"),
    "folded": dict(conv_backend="xla", layout="folded"),
    "remat": dict(conv_backend="xla", layout="natural", remat="unit"),
}
BASE_CASES = [(arch, "xla") for arch in sorted(models.ARCHITECTURES)] + [
    ("mobilenet_subbandtime", "cpu")]
# The folded layout and remat are the same XLA operations arranged differently: they run the
# forward/reverse, grad-of-grad and vmap checks (linearize/jacfwd and the Hessian-vector products
# on them would add ~5 minutes of float64 compilation to CI for no new kind of operation).
CASES = BASE_CASES + [("resunet143_ismir2021", "folded"), ("resunet143_subbandtime", "remat")]


RTOL = 1e-8
# Compiled with XLA's backend optimisations off: these graphs run once, and LLVM's optimisation of
# the float64 forward/backward graphs is most of their cost.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(autouse=True)
def _tiny_lanes(monkeypatch):
  # The tiny model's 4 channels would fold 32 bins into 128 lanes, a 32x denser convolution that
  # makes these float64 graphs minutes slower; 16 lanes give fold 4 (and 2), as the paper model's
  # 32 channels get at full resolution on a TPU. The folding code is the same for every fold.
  monkeypatch.setattr(folding, "LANES", 16)


@functools.lru_cache(maxsize=None)
def _setup32(arch, backend):
  model = models.build_model(arch, **VARIANTS[backend], **TINY)
  return model, models.init_variables(model, jax.random.PRNGKey(0))


def _setup(arch, backend):
  """(model, float64 variables, float64 input) -- call inside the float64 fixture."""
  model, variables = _setup32(arch, backend)
  if model.layout == "folded":
    assert model.folds()[0] == 4, model.folds()  # (see _tiny_lanes)
  variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
  length = models.dummy_input_length(model) + 37  # not a multiple of anything
  x = jax.random.normal(jax.random.PRNGKey(1), (2, length, 2), jnp.float64) * 0.1
  return model, variables, x


def _dot(a, b):
  return sum(float(jnp.vdot(u, v)) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                    jax.tree_util.tree_leaves(b)))


def _random_like(tree, seed):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, l.shape, jnp.float64) for k, l in zip(keys, leaves)])


def _close(a, b, rtol):
  assert abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30), (a, b)


@pytest.mark.parametrize("arch,backend", CASES)
def test_jvp_matches_vjp_in_eval_and_train_mode(arch, backend):
  model, variables, x = _setup(arch, backend)
  t = jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)
  for train in (False, True):
    def f(x, train=train):
      if train:
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
      return model.apply(variables, x)

    y, y_dot = jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, t)
    u = jax.random.normal(jax.random.PRNGKey(3), y.shape, jnp.float64)
    (x_bar,) = jit(lambda x, u: jax.vjp(f, x)[1](u))(x, u)
    _close(_dot(u, y_dot), _dot(x_bar, t), RTOL)


@pytest.mark.parametrize("arch,backend", BASE_CASES)
def test_linearize_and_jacfwd_over_parameters(arch, backend):
  model, variables, x = _setup(arch, backend)
  params = variables["params"]

  def f(p):
    return model.apply({**variables, "params": p}, x)

  tangent = _random_like(params, 4)
  y, linearized = jit(lambda p, t: (lambda out: (out[0], out[1](t)))(jax.linearize(f, p)))(
      params, tangent)
  _, y_dot = jit(lambda p, t: jax.jvp(f, (p,), (t,)))(params, tangent)
  np.testing.assert_allclose(np.asarray(linearized), np.asarray(y_dot),
                             rtol=RTOL, atol=RTOL * float(jnp.abs(y_dot).max()))
  # jacfwd over the head bias (one column per output channel), checked column by column.
  bias = params["after_conv2"]["bias"]

  def g(b):
    return model.apply({**variables, "params": {**params, "after_conv2": {
        **params["after_conv2"], "bias": b}}}, x)

  jac = jit(jax.jacfwd(g))(bias)  # (B, S, L, C, n)
  assert jac.shape == y.shape + bias.shape
  e = jnp.zeros_like(bias).at[1].set(1.0)
  _, column = jit(lambda b, e: jax.jvp(g, (b,), (e,)))(bias, e)
  np.testing.assert_allclose(np.asarray(jac[..., 1]), np.asarray(column), rtol=RTOL,
                             atol=RTOL * float(jnp.abs(column).max()))


@pytest.mark.parametrize("arch,backend", BASE_CASES)
def test_hessian_vector_products_are_symmetric(arch, backend):
  model, variables, x = _setup(arch, backend)
  params = variables["params"]
  target = jax.random.normal(jax.random.PRNGKey(5), (x.shape[0], 2) + x.shape[1:], jnp.float64) * 0.1

  def loss(p):
    y, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(y - target))

  @jit
  def hvp(v):  # forward-over-reverse
    return jax.jvp(jax.grad(loss), (params,), (v,))[1]

  u, v = _random_like(params, 6), _random_like(params, 7)
  _close(_dot(u, hvp(v)), _dot(hvp(u), v), RTOL)


@pytest.mark.parametrize("arch,backend", CASES)
def test_grad_of_grad_matches_forward_over_reverse(arch, backend):
  model, variables, x = _setup(arch, backend)

  def loss(gain):  # scalar -> scalar: the input scaled by ``gain``
    return jnp.sum(jnp.square(model.apply(variables, gain * x)))

  one = jnp.asarray(1.0, jnp.float64)
  second = jit(jax.grad(jax.grad(loss)))(one)
  forward_over_reverse = jit(lambda a: jax.jvp(jax.grad(loss), (a,), (one,))[1])(one)
  _close(float(second), float(forward_over_reverse), RTOL)
  assert np.isfinite(float(second))


@pytest.mark.parametrize("arch,backend", CASES)
def test_vmap_over_examples_equals_the_batched_call(arch, backend):
  model, variables, x = _setup(arch, backend)
  batched = jit(lambda x: model.apply(variables, x))(x)
  per_example = jit(jax.vmap(lambda xi: model.apply(variables, xi[None])[0]))(x)
  np.testing.assert_allclose(np.asarray(per_example), np.asarray(batched), rtol=RTOL,
                             atol=RTOL * float(jnp.abs(batched).max()))
  # vmap over parameter sets (an ensemble) as well.
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.5 * a]), variables["params"])
  ensemble = jit(jax.vmap(lambda p: model.apply({**variables, "params": p}, x)))(stacked)
  np.testing.assert_allclose(np.asarray(ensemble[0]), np.asarray(batched), rtol=RTOL,
                             atol=RTOL * float(jnp.abs(batched).max()))
