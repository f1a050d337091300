"""The frequency-folded layout and rematerialisation change how the model computes, not what.

Float64 throughout: the folded model (``layout="folded"``, what TPUs run) and the rematerialised
one (``remat``) must give the natural model's outputs, BatchNorm statistics and gradients from the
same variables, to rounding (measured ~1e-15 to 3e-13 relative; asserted 1e-10), and initialise
the same parameters (same names, shapes and values).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resunet_jax import folding
from resunet_jax import layers
from resunet_jax import models

RTOL = 1e-10
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _tree_rel(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  num = sum(float(jnp.sum(jnp.square(x - y))) for x, y in zip(la, lb))
  den = sum(float(jnp.sum(jnp.square(y))) for y in lb)
  return (num / den) ** 0.5


# --- the folding primitives against direct computations ------------------------------------------


@pytest.mark.parametrize("s,groups,kernel", [(2, 1, (3, 3)), (4, 1, (3, 3)), (8, 2, (3, 3)),
                                             (4, 2, (1, 1)), (2, 1, (3, 5)), (4, 1, (1, 3))])
def test_folded_convolution_equals_the_convolution(s, groups, kernel):
  rng = np.random.default_rng(0)
  cin, cout, f = 6 * groups, 5, 32
  x = jnp.asarray(rng.standard_normal((2, 7, f, cin)))
  w = jnp.asarray(rng.standard_normal(kernel + (cin, cout)))
  pad = [(k // 2, k // 2) for k in kernel]
  direct = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # The folded input of a grouped layout: lanes (g, j, c) for channel g * C + c.
  xg = x.reshape(2, 7, f // s, s, groups, cin // groups).transpose(0, 1, 2, 4, 3, 5)
  xf = xg.reshape(2, 7, f // s, s * cin)
  wf, reach = folding.fold_kernel(w, s, groups)
  y = lax.conv_general_dilated(xf, wf, (1, 1), [pad[0], (reach, reach)],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert _rel(folding.unfold(y, s), direct) < 1e-13


def test_fold_and_pool_and_upsample():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 32, 3)))
  for s in (1, 2, 4, 8):
    assert np.array_equal(folding.unfold(folding.fold(x, s), s), x)
    pooled, s_out = folding.pool(folding.fold(x, s), (2, 2), s)
    expected = layers.avg_pool(x, (2, 2))
    assert _rel(folding.unfold(pooled, s_out), expected) < 1e-14
  k = jnp.asarray(rng.standard_normal((2, 2, 3, 4)))
  for s in (1, 2, 4):
    y, s_out = layers.upsample_conv_folded(folding.fold(x, s), k, s)
    assert s_out == 2 * s
    assert _rel(folding.unfold(y, s_out), layers.upsample_conv(x, k)) < 1e-14


@pytest.mark.parametrize("chunks,kernel,s", [(2, (3, 3), 1), (4, (3, 3), 4), (8, (3, 3), 2),
                                             (4, (3, 5), 1), (2, (5, 3), 4), (4, (1, 1), 4),
                                             (8, (3, 5), 2),
                                             # chunks narrower than two reaches: 2 and 1 cells
                                             (32, (3, 5), 1), (64, (3, 3), 1)])
def test_chunked_convolution_equals_the_convolution(chunks, kernel, s):
  """The chunked layout's convolution (each chunk zero-padded, plus what the neighbouring chunks'
  edge cells contribute) is the convolution of the whole frequency axis, at every chunk boundary,
  for reaches of one and two cells (kernel widths 3, 5) on the folded grid and off it."""
  rng = np.random.default_rng(3)
  cin, cout, f = 6, 5, 64
  x = jnp.asarray(rng.standard_normal((2, 7, f, cin)))
  w = jnp.asarray(rng.standard_normal(kernel + (cin, cout)))
  pad = [(k // 2, k // 2) for k in kernel]
  direct = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  wf, reach = folding.fold_kernel(w, s)

  def conv(v, k, freq_padding):
    return lax.conv_general_dilated(v, k, (1, 1), [pad[0], freq_padding],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  xc = folding.chunk(folding.fold(x, s), chunks)
  assert xc.shape == (2 * chunks, 7, f // s // chunks, s * cin)
  y = folding.chunked_conv(xc, wf, reach, chunks, conv)
  assert _rel(folding.unfold(folding.unchunk(y, chunks), s), direct) < 1e-13
  # Without the neighbours' terms the chunk edges would be wrong (the check can fail).
  alone = folding.unfold(folding.unchunk(conv(xc, wf, (reach, reach)), chunks), s)
  assert reach == 0 or _rel(alone, direct) > 1e-3


def test_chunks():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((3, 5, 16, 4)))
  for k in (1, 2, 4, 16):
    c = folding.chunk(x, k)
    assert c.shape == (3 * k, 5, 16 // k, 4)
    j = k - 1  # example 1's last chunk
    np.testing.assert_array_equal(c[1 * k + j], x[1, :, j * 16 // k:(j + 1) * 16 // k])
    np.testing.assert_array_equal(folding.unchunk(c, k), x)
  with pytest.raises(ValueError, match="cannot split 16 frequency cells into 3 chunks"):
    folding.chunk(x, 3)
  # The paper model's folded cells per level (2048-point FFT, folds 4, 2, 1 ...).
  cells = (256, 256, 256, 128, 64, 32, 16)
  assert folding.chunk_count(2, cells) == 4  # 8 rows of a TPU tile
  assert folding.chunk_count(1, cells) == 8
  assert folding.chunk_count(3, cells) == 4
  assert folding.chunk_count(8, cells) == 1 and folding.chunk_count(16, cells) == 1
  assert folding.chunk_count(1, (8, 4, 2)) == 2  # every level keeps a cell per chunk
  assert folding.chunk_count(1, (12, 6)) == 2  # powers of two that divide every level
  assert folding.chunk_count(1, cells, sublanes=1) == 1
  paper = models.build_model("resunet143_ismir2021", layout="folded")
  assert paper.chunks(2) == 4 and paper.chunks(16) == 1
  assert paper.chunks(2, train=False) == 1  # inference: XLA's own split does better (models.py)
  assert models.build_model("resunet143_ismir2021", layout="natural").chunks(2) == 1


def test_fold_factor():
  assert folding.fold_factor(32, 1024) == 4
  assert folding.fold_factor(64, 512) == 2
  assert folding.fold_factor(128, 256) == 1
  assert folding.fold_factor(8, 4) == 4  # bounded by the bins
  assert folding.fold_factor(3, 1024) == 32  # a power of two <= 128 / C


# --- whole models ----------------------------------------------------------------------------------

# Small networks whose folds are the paper model's (4 at 32 channels, 2 at 64), and a subband one
# with a grouped (concatenated) folded decoder input and a fold that changes between levels.
MODELS = [
    # The full-width ResUNet143 variant: ~7 min of float64 on 2 cores (CI, 2026-12-07); the subband
    # one checks the same folding code in ~2 min.
    pytest.param("resunet143_ismir2021", dict(width=1.0, levels=2, blocks_per_stage=1,
                                              center_blocks=1), marks=pytest.mark.extended),
    ("resunet143_subbandtime", dict(width=0.5, levels=2, blocks_per_stage=2, center_blocks=1)),
]


@functools.lru_cache(maxsize=None)
def _variables(arch, kw):
  model = models.build_model(arch, num_sources=2, layout="natural", conv_backend="xla", **dict(kw))
  with jax.enable_x64(True):
    v = models.init_variables(model, jax.random.PRNGKey(0))
    return model, jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), v)


def _input(model):
  length = models.dummy_input_length(model) + 101
  return jax.random.normal(jax.random.PRNGKey(1), (2, length, 2), jnp.float64) * 0.1


@functools.lru_cache(maxsize=None)
def _natural_outputs(arch, kw):
  model, variables = _variables(arch, kw)
  with jax.enable_x64(True):
    return _outputs(model, variables, _input(model))


def _outputs(model, variables, x):
  """Eval output, train output, new BN statistics, gradient of a loss."""
  y_eval = jit(lambda v, x: model.apply(v, x))(variables, x)
  y_train, stats = jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)

  def loss(p):
    y, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(y - 0.1))

  grads = jit(jax.grad(loss))(variables["params"])
  return y_eval, y_train, stats, grads


@pytest.mark.parametrize("arch,kw", MODELS)
def test_folded_model_equals_natural_model(arch, kw):
  natural, variables = _variables(arch, tuple(sorted(kw.items())))
  folded = natural.clone(layout="folded")
  assert max(folded.folds()) > 1
  assert folded.chunks(_input(natural).shape[0]) > 1  # the batch of 2 is computed in chunks
  assert natural.folds() == (1,) * len(folded.folds())
  # Same parameters from the same key (names, shapes, values).
  init_f = models.init_variables(folded, jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(init_f) == jax.tree_util.tree_structure(variables)
  assert _tree_rel(init_f, variables) == 0.0  # variables: the natural model's, in float64
  x = _input(natural)
  for a, b in zip(_outputs(folded, variables, x),
                  _natural_outputs(arch, tuple(sorted(kw.items())))):
    assert _tree_rel(a, b) < RTOL


@pytest.mark.parametrize("remat", ["unit", "stage", "unit:dots_saveable"])
def test_remat_gives_the_same_gradients(remat):
  arch, kw = MODELS[1]
  key = tuple(sorted(kw.items()))
  natural, variables = _variables(arch, key)
  rematted = natural.clone(remat=remat)
  init_r = jax.eval_shape(lambda: models.init_variables(rematted, jax.random.PRNGKey(0)))
  assert jax.tree_util.tree_structure(init_r) == jax.tree_util.tree_structure(variables)
  for a, b in zip(_outputs(rematted, variables, _input(natural)), _natural_outputs(arch, key)):
    assert _tree_rel(a, b) < RTOL


def test_remat_and_folded_together_and_mobilenet():
  key = (("center_blocks", 1), ("levels", 2), ("width", 0.25))
  natural, variables = _variables("mobilenet_subbandtime", key)
  other = natural.clone(remat="stage", layout="folded")  # MobileNet stays natural; remat applies
  for a, b in zip(_outputs(other, variables, _input(natural)),
                  _natural_outputs("mobilenet_subbandtime", key)):
    assert _tree_rel(a, b) < RTOL


def test_remat_and_layout_are_checked_and_not_saved():
  with pytest.raises(models.ModelFieldError, match="remat"):
    models.build_model("resunet143_ismir2021", remat="layer")
  with pytest.raises(models.ModelFieldError, match="not a jax.checkpoint_policies policy"):
    models.build_model("resunet143_ismir2021", remat="unit:no_such_policy")
  with pytest.raises(models.ModelFieldError, match="layout"):
    models.build_model("resunet143_ismir2021", layout="nchw")
  model = models.build_model("resunet143_ismir2021", remat="stage", layout="folded")
  desc = models.describe(model)
  assert "remat" not in desc["model"] and "layout" not in desc["model"]
  assert models.for_platform(models.build_model("resunet143_ismir2021"), "tpu").layout == "folded"
  assert models.for_platform(models.build_model("resunet143_ismir2021"), "gpu").layout == "natural"
  assert models.for_platform(models.build_model("resunet143_ismir2021"), "cpu").conv_backend == "cpu"
  assert models.for_platform(models.build_model("resunet143_ismir2021"), "tpu").conv_backend == "xla"


@pytest.mark.parametrize("groups", [1, 2])
def test_synchronised_folded_batchnorm_equals_natural(groups):
  """Over 2 devices (shard_map, one all-reduce): the folded layer's statistics and output equal
  the natural layer's, also for a grouped (concatenated) folded input."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])
  rng = np.random.default_rng(2)
  c, s = 6 * groups, 4
  x = jnp.asarray(rng.standard_normal((4, 5, 16, c)) * 3 + 1.5)
  variables = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2, c)),
                          "bias": jnp.asarray(rng.standard_normal(c))},
               "batch_stats": {"mean": jnp.asarray(rng.standard_normal(c)),
                               "var": jnp.asarray(rng.uniform(0.5, 2, c))}}

  def run(layer, x):
    def f(v, x):
      return layer.apply(v, x, train=True, mutable=["batch_stats"])
    from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
    v = jax.device_put(variables, NamedSharding(mesh, P()))
    x = jax.device_put(x, NamedSharding(mesh, P("d")))
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P("d")), out_specs=(P("d"), P()),
                                 check_vma=False))(v, x)

  xg = x.reshape(4, 5, 16 // s, s, groups, c // groups).transpose(0, 1, 2, 4, 3, 5)
  xf = xg.reshape(4, 5, 16 // s, s * c)
  y_n, st_n = run(layers.BatchNorm(axis_name="d", param_dtype=jnp.float64), x)
  y_f, st_f = run(layers.BatchNorm(axis_name="d", fold=s, groups=groups,
                                   param_dtype=jnp.float64), xf)
  y_f = np.asarray(y_f).reshape(4, 5, 16 // s, groups, s, c // groups).transpose(0, 1, 2, 4, 3, 5)
  assert _rel(y_f.reshape(x.shape), y_n) < 1e-12
  assert _tree_rel(st_f, st_n) < 1e-12
