"""Separator architectures, their building blocks, and PyTorch semantics of the layers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from resunet_jax import layers
from resunet_jax import models


@pytest.mark.parametrize("arch,count", [
    ("resunet143_ismir2021", 102_571_278),
    ("resunet143_subbandtime", 102_572_466),
    ("mobilenet_subbandtime", 306_418),
])
def test_trainable_parameter_counts_equal_the_original(arch, count):
  model = models.build_model(arch)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
  assert models.count_params(shapes["params"]) == count


def test_four_source_head_sizes():
  # REFERENCE §4.6: 102,572,070 (ISMIR) and 102,575,634 (subband) trainable with 4 sources.
  for arch, count in (("resunet143_ismir2021", 102_572_070),
                      ("resunet143_subbandtime", 102_575_634)):
    model = models.build_model(arch, num_sources=4)
    shapes = jax.eval_shape(lambda m=model: models.init_variables(m, jax.random.PRNGKey(0)))
    assert models.count_params(shapes["params"]) == count


SMALL = dict(width=0.125, levels=3, blocks_per_stage=1, center_blocks=1)


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_small_models_run_with_channels_last_shapes(arch):
  length = 22_051  # not a multiple of 4
  model = models.build_model(arch, num_sources=2, **SMALL)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, length, 2)) * 0.1
  y = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert y.shape == (2, 2, length, 2) and y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y)))
  if models.ARCHITECTURES[arch]["subbands"]:
    # Like the original, subband models produce L - L mod 4 samples; the rest is zero-filled.
    assert np.all(np.asarray(y)[:, :, length - length % 4:] == 0)


def test_presets_and_small_overrides():
  model = models.build_model("resunet143_ismir2021", width=0.5, levels=4)
  assert model.channels == (16, 32, 64, 128) and model.time_multiple == 16
  with pytest.raises(ValueError, match="unknown model option"):
    models.build_model("resunet143_ismir2021", widht=0.5)
  with pytest.raises(ValueError, match="unknown architecture"):
    models.build_model("resunet999")


def test_train_mode_updates_batch_stats_and_gradients_are_finite_on_silence():
  model = models.build_model("resunet143_subbandtime", **SMALL)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  x = jnp.zeros((2, 11_025, 2))

  def loss(params):
    y, updates = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
    return jnp.mean(jnp.abs(y)), updates

  (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)),
                                   updates["batch_stats"], variables["batch_stats"])
  assert any(jax.tree_util.tree_leaves(changed))


def test_head_output_layout():
  model = models.build_model("resunet143_ismir2021", **SMALL)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 44_100, 2)) * 0.1
  _, head = model.apply(variables, x, return_head=True)
  assert head.shape == (1, 104, 1024, 8)  # T = 101 padded to a multiple of 8; 1024 bins; S*C*K


# ------------------------------------------------------------------------------------------------
# Layers against PyTorch.


def test_batchnorm_matches_pytorch_training_and_running_statistics():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((4, 5, 6, 3)).astype(np.float32) * 2 + 1
  bn_t = torch.nn.BatchNorm2d(3, momentum=0.01)
  with torch.no_grad():
    bn_t.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn_t.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
  y_t = bn_t(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  bn = layers.BatchNorm(momentum=0.01)
  variables = bn.init(jax.random.PRNGKey(0), x, train=False)
  variables = {"params": {"scale": jnp.asarray([0.5, -1.0, 2.0]),
                          "bias": jnp.asarray([0.1, 0.0, -0.3])},
               "batch_stats": variables["batch_stats"]}
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y), y_t, atol=2e-6)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["mean"]),
                             bn_t.running_mean.numpy(), atol=1e-7)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["var"]),
                             bn_t.running_var.numpy(), atol=1e-7)
  bn_t.eval()
  y_eval_t = bn_t(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  y_eval = bn.apply({**variables, **updates}, x, train=False)
  np.testing.assert_allclose(np.asarray(y_eval), y_eval_t, atol=2e-6)


def test_synchronised_batchnorm_over_devices_equals_global_batch():
  devices = jax.devices()
  if len(devices) < 4:
    pytest.skip("needs >= 4 (fake) devices")
  n = 4
  mesh = jax.make_mesh((n,), ("data",), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Explicit,))
  x = np.random.default_rng(1).standard_normal((8, 3, 5, 2)).astype(np.float32)
  bn = layers.BatchNorm(momentum=0.1)
  bn_sync = layers.BatchNorm(momentum=0.1, axis_name="data")
  variables = bn.init(jax.random.PRNGKey(0), x, train=False)

  def apply(module, v, x):
    return module.apply(v, x, train=True, mutable=["batch_stats"])

  want_y, want_updates = apply(bn, variables, x)
  sharded = jax.shard_map(functools.partial(apply, bn_sync), mesh=mesh,
                          in_specs=(P(), P("data")), out_specs=(P("data"), P()))
  x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
  y, updates = jax.jit(sharded)(variables, x_sharded)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want_y), atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(want_updates)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)


@pytest.mark.parametrize("factors", [(1, 2), (2, 2)])
def test_upsampling_conv_matches_pytorch_conv_transpose(factors):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
  conv_t = torch.nn.ConvTranspose2d(5, 7, kernel_size=factors, stride=factors, bias=False)
  y_t = conv_t(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  w = conv_t.weight.detach().numpy()  # (in, out, kT, kF)
  up = layers.UpsampleConv(7, factors)
  y = up.apply({"params": {"kernel": np.transpose(w, (2, 3, 0, 1))}}, x)
  np.testing.assert_allclose(np.asarray(y), y_t, atol=1e-5)


def test_mobilenet_depthwise_conv_is_a_grouped_nn_conv_and_the_cpu_backend_agrees():
  x = np.random.default_rng(3).standard_normal((2, 9, 7, 6)).astype(np.float32)
  kernel = np.random.default_rng(4).standard_normal((3, 3, 1, 6)).astype(np.float32)
  want = nn.Conv(6, (3, 3), padding="SAME", feature_group_count=6, use_bias=False).apply(
      {"params": {"kernel": kernel}}, x)
  for backend in ("xla", "cpu"):
    conv = layers.conv(6, (3, 3), groups=6, backend=backend)
    assert isinstance(conv, nn.Conv) and conv.feature_group_count == 6
    got = conv.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, err_msg=backend)


def test_bfloat16_compute_keeps_float32_params():
  model = models.build_model("mobilenet_subbandtime", dtype="bfloat16", **SMALL)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
  y = model.apply(variables, jnp.ones((1, 11_025, 2)) * 0.1)
  assert y.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(y)))


def test_upsampling_conv_gradients_equal_autodiff_of_the_definition():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((2, 2, 5, 3)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((2, 6, 8, 3)), jnp.float32)

  def definition(x, k):
    y = jnp.einsum("btfc,uvco->btufvo", x, k)
    return y.reshape(2, 6, 8, 3)

  y, vjp = jax.vjp(lambda x, k: layers.upsample_conv(x, k), x, kernel)
  y_ref, vjp_ref = jax.vjp(definition, x, kernel)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_auto_backend_resolves_by_platform():
  from resunet_jax import backends  # pylint: disable=g-import-not-at-top
  assert backends.resolve("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")
  assert backends.resolve("xla") == "xla"
  with pytest.raises(ValueError, match="unknown conv_backend 'cuda'"):
    backends.resolve("cuda")
