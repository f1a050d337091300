"""The C++ CPU kernel for convolution weight gradients (resunet_jax.cpu_kernels)."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resunet_jax import cpu_kernels, layers

pytestmark = pytest.mark.skipif(
    cpu_kernels.find_compiler() is None,
    reason="no C++ compiler ($CXX, c++, g++, clang++): the kernel cannot be built here and "
           "conv2d_same uses XLA's kernel gradient")

# (N, T, F, I, O, kh, kw)
SHAPES = [
    (2, 7, 9, 5, 16, 3, 3),      # two images; 5 input channels = 4 + 1 (tile remainders)
    (1, 3, 2, 3, 32, 5, 3),      # kernel taller and wider than the image: offsets with no pixels
    (3, 16, 33, 40, 48, 3, 3),   # 40 = 12 + 12 + 12 + 4 inputs, 48 = 32 + 16 outputs
    (1, 1, 1, 1, 16, 3, 5),      # one pixel
    (1, 40, 256, 32, 32, 3, 3),  # 5 blocks of rows, summed by 5 slots
    (1, 6, 10, 256, 256, 3, 3),  # dw of 2.4 MB: the threads split the output channels
]


def _reference(x, dy, kh, kw):
  kernel = jnp.zeros((kh, kw, x.shape[-1], dy.shape[-1]), jnp.float32)
  return layers._kernel_gradient_xla(x, dy, kernel, lax.Precision.HIGHEST)


def _operands(shape, seed=0):
  n, t, f, i, o, _, _ = shape
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, t, f, i)), jnp.float32),
          jnp.asarray(rng.standard_normal((n, t, f, o)), jnp.float32))


def _isas():
  """The generic copy always; AVX2 and AVX-512 where this CPU has them."""
  assert cpu_kernels.load(), cpu_kernels._state["error"]
  isas = [cpu_kernels.ISA_GENERIC]
  flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
  if " avx2" in flags and " fma" in flags:
    isas.append(cpu_kernels.ISA_AVX2)
  if " avx512f" in flags and " fma" in flags:
    isas.append(cpu_kernels.ISA_AVX512)
  return isas


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_gradient_equals_xla(shape):
  x, dy = _operands(shape)
  kh, kw = shape[5:]
  want = np.asarray(_reference(x, dy, kh, kw))
  for isa in _isas():
    got = np.asarray(jax.jit(lambda a, b, isa=isa: cpu_kernels.conv_kernel_grad(a, b, kh, kw, isa))(
        x, dy))
    assert got.shape == want.shape
    # Float32 sums in another order: measured at most 1.3e-6 of the largest entry.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=f"isa {isa}")


# (N, T, F, I, O, kh, kw) for the forward convolution.
CONV_SHAPES = [
    (2, 5, 30, 3, 16, 3, 3),    # rows of 30 pixels: tiles of 12, 12, 4, single pixels, edges
    (1, 4, 2, 32, 48, 3, 5),    # rows shorter than the kernel: every pixel is an edge pixel
    (1, 37, 64, 32, 32, 3, 3),  # the model's shape class (32 -> 32)
    (3, 1, 1, 8, 32, 1, 1),     # 1x1 kernel, one pixel
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_convolution_equals_xla(shape):
  x, _ = _operands(shape)
  kh, kw = shape[5:]
  rng = np.random.default_rng(4)
  kernel = jnp.asarray(rng.standard_normal((kh, kw, shape[3], shape[4])), jnp.float32)
  want = np.asarray(layers._conv_same_xla(x, kernel, lax.Precision.HIGHEST))
  for isa in _isas():
    got = np.asarray(jax.jit(lambda a, k, isa=isa: cpu_kernels.conv(a, k, isa))(x, kernel))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=f"isa {isa}")


# (N, T, F, I, O, kh, kw) for the input gradient.
INPUT_GRAD_SHAPES = [
    (2, 5, 7, 13, 16, 3, 3),    # two images; 13 = 6 + 6 + 1 input channels
    (1, 3, 2, 40, 32, 5, 3),    # kernel larger than the image
    (1, 1, 1, 7, 48, 3, 3),     # one pixel
    (1, 10, 8, 384, 384, 3, 3),  # the deepest layers of the ResUNet143 models
]


@pytest.mark.parametrize("shape", INPUT_GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_input_gradient_equals_xla(shape):
  n, t, f, i, o, kh, kw = shape
  rng = np.random.default_rng(10)
  dy = jnp.asarray(rng.standard_normal((n, t, f, o)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kh, kw, i, o)), jnp.float32)
  want = np.asarray(layers._input_gradient_xla(dy, kernel, lax.Precision.HIGHEST))
  for isa in _isas():
    got = np.asarray(jax.jit(lambda a, k, isa=isa: cpu_kernels.conv_input_grad(a, k, isa))(
        dy, kernel))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=f"isa {isa}")


@pytest.mark.parametrize("channels", [(5, 3), (128, 128), (384, 256)])
def test_flip_swap_and_its_gradient(channels):
  rng = np.random.default_rng(6)
  kernel = jnp.asarray(rng.standard_normal((3, 5) + channels), jnp.float32)
  assert cpu_kernels.load()
  want = np.asarray(jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_kernels.flip_swap)(kernel)), want)
  cot = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  _, vjp = jax.vjp(cpu_kernels.flip_swap, kernel)
  _, vjp_ref = jax.vjp(lambda k: jnp.flip(k, (0, 1)).swapaxes(2, 3), kernel)
  np.testing.assert_array_equal(np.asarray(vjp(cot)[0]), np.asarray(vjp_ref(cot)[0]))


@pytest.mark.parametrize("shape", [(2, 5, 7, 16), (1, 3, 1, 32), (1, 1, 2, 48), (1, 70, 256, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_depthwise_kernel_gradient_equals_xla(shape):
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  want = np.asarray(jax.jit(layers._depthwise_kernel_grad_xla)(x, dy))
  for isa in _isas():
    got = np.asarray(jax.jit(lambda a, b, isa=isa: cpu_kernels.depthwise_kernel_grad(a, b, isa))(
        x, dy))
    assert got.shape == want.shape == (3, 3, 1, shape[-1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=f"isa {isa}")


def test_depthwise_conv_gradients_equal_the_grouped_convolution():
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_normal((2, 9, 11, 32)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 32)), jnp.float32)

  def grouped(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=32, precision=lax.Precision.HIGHEST)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

  hlo = jax.jit(jax.grad(loss(layers.depthwise_conv3x3), argnums=(0, 1))).lower(x, kernel)
  assert cpu_kernels.DEPTHWISE_TARGET in hlo.as_text()
  got = jax.jit(jax.grad(loss(layers.depthwise_conv3x3), argnums=(0, 1)))(x, kernel)
  want = jax.grad(loss(grouped), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-4)


def test_result_does_not_depend_on_the_thread_count(tmp_path):
  shape = (1, 40, 256, 32, 32, 3, 3)
  x, dy = _operands(shape, seed=3)
  f = jax.jit(lambda a, b: cpu_kernels.conv_kernel_grad(a, b, 3, 3))
  here = np.asarray(f(x, dy))
  np.testing.assert_array_equal(np.asarray(f(x, dy)), here)
  # XLA sizes its intra-op thread pool from the CPUs the process may run on: one here.
  np.save(tmp_path / "x.npy", np.asarray(x))
  np.save(tmp_path / "dy.npy", np.asarray(dy))
  script = textwrap.dedent(f"""
      import os
      os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
      import numpy as np, jax
      from resunet_jax import cpu_kernels
      assert cpu_kernels.load()
      x, dy = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'dy.npy')!r})
      out = jax.jit(lambda a, b: cpu_kernels.conv_kernel_grad(a, b, 3, 3))(x, dy)
      np.save({str(tmp_path / 'one_cpu.npy')!r}, np.asarray(out))
  """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
  np.testing.assert_array_equal(np.load(tmp_path / "one_cpu.npy"), here)


def _grad_hlo(x, kernel):
  def loss(x, k):
    return jnp.sum(layers.conv2d_same(x, k) ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).as_text()


def test_conv2d_same_uses_the_kernels_only_where_they_apply(monkeypatch):
  targets = (cpu_kernels.KERNEL_GRAD_TARGET, cpu_kernels.CONV_TARGET, cpu_kernels.FLIP_SWAP_TARGET,
             cpu_kernels.INPUT_GRAD_TARGET)

  def used(x, kernel):
    hlo = _grad_hlo(x, kernel)
    return {t for t in targets if t in hlo}

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  assert used(x, jnp.ones((3, 3, 4, 16), jnp.float32)) == {cpu_kernels.KERNEL_GRAD_TARGET,
                                                           cpu_kernels.CONV_TARGET}
  # Deep layers: few pixels, many channels; the same channels on many pixels.
  x128 = jnp.asarray(rng.standard_normal((1, 4, 4, 128)), jnp.float32)
  k128 = jnp.ones((3, 3, 128, 128), jnp.float32)
  assert used(x128, k128) == {cpu_kernels.KERNEL_GRAD_TARGET, cpu_kernels.INPUT_GRAD_TARGET}
  wide = jnp.asarray(rng.standard_normal((1, 40, 32, 128)), jnp.float32)
  assert used(wide, k128) == {cpu_kernels.KERNEL_GRAD_TARGET, cpu_kernels.FLIP_SWAP_TARGET}
  # 8 output channels (not a multiple of 16), bfloat16, 1x1 kernels (a matmul), switched off.
  assert not used(x, jnp.ones((3, 3, 4, 8), jnp.float32))
  assert not used(x.astype(jnp.bfloat16), jnp.ones((3, 3, 4, 16), jnp.bfloat16))
  assert not used(x, jnp.ones((1, 1, 4, 16), jnp.float32))
  monkeypatch.setenv("RESUNET_CPU_KERNELS", "0")
  assert not used(x, jnp.ones((3, 3, 4, 16), jnp.float32))
  assert not used(x128, jnp.ones((3, 3, 128, 128), jnp.float32))


@pytest.mark.parametrize("channels", [(5, 32), (128, 16)], ids=("few_inputs", "deep"))
def test_conv2d_same_gradients_through_the_kernels_equal_xla(channels):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 12, 10, channels[0])), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3) + channels) * 0.1, jnp.float32)

  def reference(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

  got = jax.jit(jax.grad(loss(layers.conv2d_same), argnums=(0, 1)))(x, kernel)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)

  # Gradients of a function of the kernel gradient (through the custom JVP of the FFI call).
  def second(conv):
    def f(x):
      dk = jax.grad(loss(conv), argnums=1)(x, kernel)
      return jnp.sum(dk ** 2)
    return jax.grad(f)

  got2 = jax.jit(second(layers.conv2d_same))(x)
  want2 = second(reference)(x)
  np.testing.assert_allclose(np.asarray(got2), np.asarray(want2), rtol=1e-4,
                             atol=1e-4 * np.abs(np.asarray(want2)).max())


def test_build_writes_one_library_and_a_failed_build_falls_back_with_a_warning(
    tmp_path, monkeypatch):
  path = cpu_kernels.build(directory=str(tmp_path / "ok"))
  assert os.listdir(tmp_path / "ok") == [os.path.basename(path)]  # no temporary files left
  assert cpu_kernels.build(directory=str(tmp_path / "ok")) == path  # cached

  saved = dict(cpu_kernels._state)
  fake = tmp_path / "fake-c++"
  fake.write_text("#!/bin/sh\necho 'fake compiler: no' >&2\nexit 1\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CXX", str(fake))
  monkeypatch.setenv("RESUNET_JAX_KERNEL_CACHE", str(tmp_path / "bad"))
  try:
    cpu_kernels._state.update(loaded=None, error=None)
    with pytest.warns(RuntimeWarning, match="fake compiler: no"):
      assert cpu_kernels.load() is False
    assert os.listdir(tmp_path / "bad") == []
  finally:
    cpu_kernels._state.clear()
    cpu_kernels._state.update(saved)


def test_bad_operands_give_a_clear_error():
  if cpu_kernels.ISA_AVX512 not in _isas():
    pytest.skip("needs AVX-512 (16-float vectors: 8 output channels are not a whole vector)")
  x = jnp.ones((1, 4, 4, 3), jnp.float32)
  with pytest.raises(Exception, match="output channels must be a multiple of 16"):
    jax.block_until_ready(jax.jit(
        lambda a, b: cpu_kernels.conv_kernel_grad(a, b, 3, 3, cpu_kernels.ISA_AVX512))(
            x, jnp.ones((1, 4, 4, 8), jnp.float32)))
  with pytest.raises(Exception, match="expected x and dy"):
    jax.block_until_ready(jax.jit(cpu_kernels.depthwise_kernel_grad)(
        jnp.ones((1, 4, 4, 16), jnp.float32), jnp.ones((1, 4, 5, 16), jnp.float32)))
