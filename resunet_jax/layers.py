"""Building blocks of the ResUNet and MobileNet separators (channels-last: (B, T, F, C)).

Parameter names follow the authors' PyTorch modules (``bn1``, ``conv1``, ``abn2``, ``shortcut``,
``conv_block1`` ...), so a state-dict key maps onto a Flax path by replacing dots with slashes.
"""
from typing import Any, Optional, Tuple

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resunet_jax import cpu_kernels

Dtype = Any

LEAKY_SLOPE = 0.01
# The authors' Conv2d weights are Xavier-uniform (gain 1), biases zero (REFERENCE §4.7). On HWIO
# kernels flax's variance scaling takes fan_in = in*kh*kw and fan_out = out*kh*kw, as PyTorch does.
conv_init = nn.initializers.xavier_uniform()


def activation_fn(name):
  if name == "leaky_relu":
    return lambda x: nn.leaky_relu(x, LEAKY_SLOPE)
  if name == "relu":
    return nn.relu
  raise ValueError(f"unknown activation {name!r}; expected 'leaky_relu' or 'relu'")


def axis_mean(x, axis_name):
  """``lax.pmean(x, axis_name)``, skipped where the axis has one device (a static size): XLA keeps
  an all-reduce over one device as a copy (the paper model's gradients: 410 MB per step)."""
  if axis_name is None or lax.axis_size(axis_name) == 1:
    return x
  return lax.pmean(x, axis_name)


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch's semantics, synchronised over ``axis_name`` when it is set.

  ``momentum`` is PyTorch's: running <- (1 - momentum) * running + momentum * batch statistic,
  the running variance taking the unbiased batch variance, normalisation the biased one. With
  ``axis_name`` the statistics are those of the global batch (like SyncBatchNorm): means of the
  per-device moments, exact because every device holds the same number of elements.
  ``activation`` turns it into InPlaceABN's activated BN (BN then leaky ReLU); a converted InPlaceABN
  layer stores |gamma| + 1e-5 as its scale (REFERENCE §4.8).
  """
  momentum: float = 0.01
  epsilon: float = 1e-5
  feature_axis: int = -1
  axis_name: Optional[str] = None
  activation: Optional[str] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    axis = self.feature_axis % x.ndim
    features = x.shape[axis]
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), self.param_dtype)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), self.param_dtype)
    # Statistics in at least float32 whatever the compute dtype.
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    xs = x.astype(stat_dtype)
    reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = features

    if train:
      count = 1
      for i in reduce_axes:
        count *= x.shape[i]
      mean = jnp.mean(xs, axis=reduce_axes)
      if self.axis_name is not None:
        mean = axis_mean(mean, self.axis_name)
        count = count * lax.axis_size(self.axis_name)
      var = jnp.mean(jnp.square(xs - mean.reshape(shape)), axis=reduce_axes)
      if self.axis_name is not None:
        var = axis_mean(var, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        m = self.momentum
        running_mean.value = ((1 - m) * running_mean.value + m * mean).astype(self.param_dtype)
        running_var.value = ((1 - m) * running_var.value + m * unbiased).astype(self.param_dtype)
    else:
      mean, var = running_mean.value, running_var.value

    mul = scale.astype(stat_dtype) * lax.rsqrt(var.astype(stat_dtype) + self.epsilon)
    add = bias.astype(stat_dtype) - mean.astype(stat_dtype) * mul
    y = xs * mul.reshape(shape) + add.reshape(shape)
    if self.activation is not None:
      y = activation_fn(self.activation)(y)
    return y.astype(self.dtype or x.dtype)


class _Base(nn.Module):
  """Fields every block shares."""
  activation: str = "leaky_relu"
  momentum: float = 0.01
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  def bn(self, name, activation=None, momentum=None):
    return BatchNorm(momentum=self.momentum if momentum is None else momentum,
                     axis_name=self.axis_name, activation=activation, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def conv(self, name, features, kernel=(3, 3), groups=1, bias=False):
    if groups > 1:
      assert groups == features and kernel == (3, 3) and not bias
      return DepthwiseConv3x3(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return Conv(features, tuple(kernel), use_bias=bias, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision, name=name)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_same_xla(x, kernel, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC,
                                  precision=precision)


def _cpu_kernels_apply(*arrays):
  """Whether the C++ CPU kernels (``cpu_kernels``) run for these float32 operands.

  Decided while tracing the CPU branch of ``lax.platform_dependent``, and only where the CPU is the
  default backend: GPU/TPU hosts trace that branch too but never lower it, so nothing is compiled
  there. Check the shape conditions first: this builds the kernels on first use.
  """
  return (jax.default_backend() == "cpu" and all(a.dtype == jnp.float32 for a in arrays)
          and cpu_kernels.enabled() and cpu_kernels.load())


def _bilinear_ffi(ffi_fn, xla_fn):
  """``ffi_fn`` (a C++ kernel) made differentiable through ``xla_fn``, the same bilinear map in XLA
  ops: the tangent of f(a, b) is xla_fn(da, b) + xla_fn(a, db), which JAX can transpose (so
  gradients of gradients work)."""
  @jax.custom_jvp
  def f(a, b):
    return ffi_fn(a, b)

  @f.defjvp
  def f_jvp(primals, tangents):
    (a, b), (a_dot, b_dot) = primals, tangents
    return f(a, b), xla_fn(a_dot, b) + xla_fn(a, b_dot)

  return f


# On CPU, float32 convolutions with at most this many input channels (and a multiple of 16 output
# channels, kernels larger than 1x1) run the C++ kernel (``cpu_kernels.conv``): XNNPACK is slowest
# there, e.g. (1, 304, 256, 32) -> 32 3x3: 6.1 -> 5.1 ms, (1, 320, 1024, 32): 24.5 -> 20.7 ms. From
# 64 input channels on XNNPACK is as fast or faster ((1, 160, 512, 64): 22.4 vs 22.7 ms; deeper
# layers with few pixels: (1, 10, 8, 384) 1.3 vs 1.7-1.9 ms).
CPP_CONV_MAX_INPUT_CHANNELS = 32


def _conv_same_cpu(x, k, precision):
  if (k.shape[0] * k.shape[1] > 1 and k.shape[2] <= CPP_CONV_MAX_INPUT_CHANNELS
      and k.shape[3] % cpu_kernels.CHANNEL_MULTIPLE == 0 and _cpu_kernels_apply(x, k)):
    return _bilinear_ffi(cpu_kernels.conv, lambda a, b: _conv_same_xla(a, b, precision))(x, k)
  return _conv_same_xla(x, k, precision)


def _conv_same(x, kernel, precision):
  """Stride-1 "SAME" convolution (NHWC, HWIO): XLA's, or on CPU the C++ kernel where faster."""
  return lax.platform_dependent(x, kernel, cpu=lambda x, k: _conv_same_cpu(x, k, precision),
                                default=lambda x, k: _conv_same_xla(x, k, precision))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_same(x, kernel, precision=None):
  """Stride-1 "SAME" convolution, NHWC x HWIO, odd kernel sizes, with a faster weight gradient.

  Values and gradients are those of ``lax.conv_general_dilated``; only the kernel gradient is
  computed differently, and only where that is faster:
  * 1x1 kernels: one matmul x^T dy (1.5-2.2x faster than the convolution on CPU; MobileNet train
    step 1.21 -> 1.35 steps/s);
  * larger kernels on CPU: XLA:CPU lowers the kernel gradient as a "backprop-filter" convolution
    that runs 3-10x slower than the forward pass. For float32 with a multiple of 16 output
    channels a C++ kernel computes it (``cpu_kernels``, an XLA FFI call: a (1, 320, 1024, 32) 3x3
    layer 130-165 ms -> 22 ms); otherwise, or where that kernel cannot be built, it is written as
    ordinary forward convolutions (batch = input channels, features = batch, the output gradient
    as a T x F kernel), one per block of time rows (``_kernel_gradient_cpu``, same layer: 44 ms).
    On GPU and TPU (``lax.platform_dependent``) XLA's own kernel gradient is used: cuDNN and the
    TPU compiler have fast native ones and the rewrites were not measured there.
  """
  return _conv_same(x, kernel, precision)


def _conv2d_same_fwd(x, kernel, precision):
  return _conv_same(x, kernel, precision), (x, kernel)


# Time rows per block of the CPU kernel gradient: about this many bytes of (padded) input per block.
KERNEL_GRADIENT_BLOCK_BYTES = 1 << 20


def _kernel_gradient_cpu(x, dy, kh, kw, precision, block_bytes=None):
  """dW[a, b, i, o] = sum_{n,t,f} x_pad[n, t + a, f + b, i] dy[n, t, f, o], as forward convs.

  Each block of time rows is one forward convolution (batch = input channels, features = batch,
  the block's output gradient as a rows x F kernel) and the blocks' results are summed. One
  convolution over all rows re-reads the input from memory for each of the kh x kw offsets;
  blocks of ~1 MiB stay in cache. Measured on an idle 2-core CPU, (1, T, F, C) 3x3 layers, one
  convolution -> blocks: (320, 1024, 32) 70 -> 44 ms, (160, 512, 64) 48 -> 34 ms, (80, 256, 128)
  35 -> 27 ms, (40, 128, 256) 24 -> 23 ms; 1 MiB was the best of 256 KiB ... 4 MiB at all four.
  """
  n, t, f, i = x.shape
  o = dy.shape[-1]
  ht, hf = kh // 2, kw // 2
  row_bytes = n * (f + kw - 1) * max(i, o) * x.dtype.itemsize
  block_bytes = KERNEL_GRADIENT_BLOCK_BYTES if block_bytes is None else block_bytes
  rows = int(min(t, max(1, round(block_bytes / row_bytes))))
  dk = None
  for start in range(0, t, rows):
    stop = min(start + rows, t)
    # Rows start - ht ... stop + ht of x, zero outside, padded per block (no padded copy of x).
    lo, hi = max(start - ht, 0), min(stop + ht, t)
    block = jnp.pad(x[:, lo:hi], ((0, 0), (lo - start + ht, stop + ht - hi), (hf, hf), (0, 0)))
    # (I, rows + kh - 1, F + kw - 1, N): batch = channels; (rows, F, N, O): dy as the kernel.
    lhs = jnp.transpose(block, (3, 1, 2, 0))
    rhs = jnp.transpose(dy[:, start:stop], (1, 2, 0, 3))
    part = lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=_NHWC,
                                    precision=precision)  # (I, kh, kw, O)
    dk = part if dk is None else dk + part
  return jnp.transpose(dk, (1, 2, 0, 3))


def _kernel_gradient_cpu_best(x, dy, kh, kw, precision):
  if dy.shape[-1] % cpu_kernels.CHANNEL_MULTIPLE == 0 and _cpu_kernels_apply(x, dy):
    return _bilinear_ffi(lambda a, b: cpu_kernels.conv_kernel_grad(a, b, kh, kw),
                         lambda a, b: _kernel_gradient_cpu(a, b, kh, kw, precision))(x, dy)
  return _kernel_gradient_cpu(x, dy, kh, kw, precision)


def _kernel_gradient_xla(x, dy, kernel, precision):
  """XLA's own kernel gradient of the convolution (its transpose)."""
  _, vjp = jax.vjp(lambda k: _conv_same_xla(x, k, precision), kernel)
  return vjp(dy)[0]


# Kernels with at least this many I x O entries are flipped by the C++ kernel on CPU (float32).
FLIP_SWAP_MIN_CHANNELS = 128 * 128


def _flip_swap(kernel):
  """The input gradient correlates dy with this: the kernel spatially flipped, in/out swapped."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _flip_swap_cpu(kernel):
  if kernel.shape[2] * kernel.shape[3] >= FLIP_SWAP_MIN_CHANNELS and _cpu_kernels_apply(kernel):
    return cpu_kernels.flip_swap(kernel)
  return _flip_swap(kernel)


def _input_gradient_xla(dy, kernel, precision):
  return _conv_same_xla(dy, _flip_swap(kernel), precision)


# On CPU (float32), input gradients of layers with at most this many pixels per image and at least
# CPP_INPUT_GRAD_MIN_CHANNELS input channels run the C++ kernel (``cpu_kernels.conv_input_grad``),
# which reads the kernel as it is; elsewhere a convolution with the flipped, transposed kernel.
# Measured, 3x3, C -> C: (1, 10, 8, 384) 2.34 -> 0.94 ms, (1, 19, 16, 384) 4.08 -> 3.04 ms,
# (1, 10, 32, 384) 4.77 -> 3.05 ms; from ~1200 pixels on the convolution is as fast or faster
# ((1, 38, 32, 256) 5.67 vs 5.77 ms, (1, 20, 64, 384) 12.0 vs 12.4 ms).
CPP_INPUT_GRAD_MAX_PIXELS = 512
CPP_INPUT_GRAD_MIN_CHANNELS = 128


def _input_gradient(dy, kernel, precision):
  """dx of ``conv2d_same``: dy correlated with the kernel spatially flipped, in/out swapped."""
  def cpu(dy, k):
    if (dy.shape[1] * dy.shape[2] <= CPP_INPUT_GRAD_MAX_PIXELS
        and k.shape[2] >= CPP_INPUT_GRAD_MIN_CHANNELS
        and k.shape[3] % cpu_kernels.CHANNEL_MULTIPLE == 0 and _cpu_kernels_apply(dy, k)):
      return _bilinear_ffi(cpu_kernels.conv_input_grad,
                           lambda a, b: _input_gradient_xla(a, b, precision))(dy, k)
    return _conv_same_cpu(dy, _flip_swap_cpu(k), precision)

  return lax.platform_dependent(dy, kernel, cpu=cpu,
                                default=lambda dy, k: _input_gradient_xla(dy, k, precision))


def _conv2d_same_bwd(precision, residuals, dy):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  dx = _input_gradient(dy, kernel, precision)
  if kh == kw == 1:
    dk = lax.dot_general(x, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)
    dk = dk.reshape(kernel.shape)
  else:
    dk = lax.platform_dependent(
        x, dy, cpu=lambda a, b: _kernel_gradient_cpu_best(a, b, kh, kw, precision),
        default=lambda a, b: _kernel_gradient_xla(a, b, kernel, precision))
  return dx, dk.astype(kernel.dtype)


conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


class Conv(nn.Module):
  """Dense stride-1 "SAME" conv (odd kernel) with ``nn.Conv``'s parameters (``kernel`` HWIO,
  optional ``bias``), computed by ``conv2d_same``."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  use_bias: bool = False
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
      raise ValueError(f"Conv needs odd kernel sizes, got {self.kernel_size}")
    kernel = self.param("kernel", conv_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    y = conv2d_same(x.astype(dtype), kernel.astype(dtype), self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


class DepthwiseConv3x3(nn.Module):
  """3x3 depthwise conv, "SAME" padding, no bias; kernel (3, 3, 1, C) as ``nn.Conv`` stores it.

  Written as nine shifted multiply-adds, which XLA fuses into one loop: on CPU this is ~15x
  faster than the grouped convolution (measured 105 ms vs 1.6 s on a (1, 4032, 256, 32) input).
  """
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    kernel = self.param("kernel", conv_init, (3, 3, 1, features), self.param_dtype)
    dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    return depthwise_conv3x3(x.astype(dtype), kernel.astype(dtype))


def _depthwise_conv3x3_xla(x, kernel):
  t, f = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = None
  for a in range(3):
    for b in range(3):
      term = padded[:, a:a + t, b:b + f, :] * kernel[a, b, 0]
      out = term if out is None else out + term
  return out


def _depthwise_kernel_grad_xla(x, dy):
  kernel = jnp.zeros((3, 3, 1, x.shape[-1]), x.dtype)
  return jax.vjp(lambda k: _depthwise_conv3x3_xla(x, k), kernel)[1](dy)[0]


@jax.custom_vjp
def depthwise_conv3x3(x, kernel):
  """3x3 depthwise "SAME" convolution, x (N, T, F, C), kernel (3, 3, 1, C).

  Values and gradients are those of the nine shifted multiply-adds; on CPU (float32, C a
  multiple of 16) the kernel gradient is the C++ kernel's (``cpu_kernels``): XLA makes it nine
  separate reductions, (1, 304, 256, 64): 24.5 ms -> 1.6 ms.
  """
  return _depthwise_conv3x3_xla(x, kernel)


def _depthwise_conv3x3_fwd(x, kernel):
  return _depthwise_conv3x3_xla(x, kernel), (x, kernel)


def _depthwise_conv3x3_bwd(residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _depthwise_conv3x3_xla(x, kernel), x)[1](dy)[0]

  def cpu(x, dy):
    if x.shape[-1] % cpu_kernels.CHANNEL_MULTIPLE == 0 and _cpu_kernels_apply(x, dy):
      return _bilinear_ffi(cpu_kernels.depthwise_kernel_grad, _depthwise_kernel_grad_xla)(x, dy)
    return _depthwise_kernel_grad_xla(x, dy)

  dk = lax.platform_dependent(x, dy, cpu=cpu, default=_depthwise_kernel_grad_xla)
  return dx, dk.astype(kernel.dtype)


depthwise_conv3x3.defvjp(_depthwise_conv3x3_fwd, _depthwise_conv3x3_bwd)


class ConvBlockRes(_Base):
  """Pre-activation residual unit: BN-act-conv3x3-BN-act-conv3x3 plus (1x1-conv) shortcut.

  ``second_norm="abn"`` is the paper model's InPlaceABN in the second position (``abn2``).
  """
  features: int = 32
  second_norm: str = "bn"

  @nn.compact
  def __call__(self, x, train: bool):
    act = activation_fn(self.activation)
    h = act(self.bn("bn1")(x, train))
    h = self.conv("conv1", self.features)(h)
    if self.second_norm == "abn":
      h = self.bn("abn2", activation="leaky_relu")(h, train)
    elif self.second_norm == "bn":
      h = act(self.bn("bn2")(h, train))
    else:
      raise ValueError(f"second_norm must be 'bn' or 'abn', got {self.second_norm!r}")
    h = self.conv("conv2", self.features)(h)
    if x.shape[-1] != self.features:
      x = self.conv("shortcut", self.features, kernel=(1, 1), bias=True)(x)
    return x + h


class ResStage(_Base):
  """``num_blocks`` ConvBlockRes units (``conv_block1`` ...); EncoderBlockRes4B without pooling."""
  features: int = 32
  num_blocks: int = 4
  second_norm: str = "bn"

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_blocks):
      x = ConvBlockRes(features=self.features, second_norm=self.second_norm,
                       activation=self.activation, momentum=self.momentum,
                       axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision, name=f"conv_block{i + 1}")(x, train)
    return x


def avg_pool(x, pool):
  if tuple(pool) == (1, 1):
    return x
  return nn.avg_pool(x, tuple(pool), strides=tuple(pool), padding="VALID")


def upsample_conv(x, kernel, precision=None):
  """Transposed conv with kernel = stride: out[b, s_t i + a, s_f j + c, o] = sum_ch x[b, i, j, ch]
  W[a, c, ch, o] for a kernel W (s_t, s_f, in, out).

  One matmul to (B, T, F, s_t, s_f, O) and an interleaving transpose (2.5-4.6x faster on CPU than
  the einsum with the interleave folded in); its gradients are matmuls too (autodiff).
  """
  b, t, f, c = x.shape
  st, sf, _, o = kernel.shape
  wm = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, st * sf * o)
  y = jnp.dot(x.reshape(-1, c), wm, precision=precision).reshape(b, t, f, st, sf, o)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, t * st, f * sf, o)


class UpsampleConv(nn.Module):
  """PyTorch's ConvTranspose2d(k = s, padding 0, no bias) (see ``upsample_conv``); the kernel is
  stored as (kT, kF, in, out) = PyTorch's (in, out, kT, kF) weight transposed by (2, 3, 0, 1)."""
  features: int
  factors: Tuple[int, int]
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    ft, ff = self.factors
    kernel = self.param("kernel", conv_init, (ft, ff, x.shape[-1], self.features),
                        self.param_dtype)
    dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    return upsample_conv(x.astype(dtype), kernel.astype(dtype), self.precision)


class DecoderStage(_Base):
  """DecoderBlockRes4B: BN-ReLU on the input, transposed-conv upsampling, concat with the skip
  ([upsampled, skip]), then ``num_blocks`` ConvBlockRes units (``conv_block2`` ...)."""
  features: int = 32
  factors: Tuple[int, int] = (2, 2)
  num_blocks: int = 4
  second_norm: str = "bn"
  input_activation: str = "relu"

  @nn.compact
  def __call__(self, x, skip, train: bool):
    h = activation_fn(self.input_activation)(self.bn("bn1")(x, train))
    h = UpsampleConv(self.features, tuple(self.factors), dtype=self.dtype,
                     param_dtype=self.param_dtype, precision=self.precision, name="conv1")(h)
    h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
    for i in range(self.num_blocks):
      h = ConvBlockRes(features=self.features, second_norm=self.second_norm,
                       activation=self.activation, momentum=self.momentum,
                       axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                       precision=self.precision, name=f"conv_block{2 + i}")(h, train)
    return h


class MobileNetConvBlock(_Base):
  """Two inverted-residual-style halves (1x1 - depthwise 3x3 - 1x1, each conv pre-activated by
  BN + leaky ReLU), the first with a 1x1 shortcut when the width changes (REFERENCE §4.5).
  All six BNs use PyTorch's default momentum 0.1."""
  features: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    act = activation_fn("leaky_relu")
    out = self.features

    def half(h, tag):
      h = self.conv(f"conv{tag}a", out, kernel=(1, 1))(act(self.bn(f"bn{tag}a", momentum=0.1)(h, train)))
      h = self.conv(f"conv{tag}b", out, groups=out)(act(self.bn(f"bn{tag}b", momentum=0.1)(h, train)))
      h = self.conv(f"conv{tag}c", out, kernel=(1, 1))(act(self.bn(f"bn{tag}c", momentum=0.1)(h, train)))
      return h

    h = half(x, "1")
    if x.shape[-1] != out:
      x = self.conv("shortcut", out, kernel=(1, 1), bias=True)(x)
    origin = x + h
    return origin + half(origin, "2")


class MobileNetEncoderStage(_Base):
  """``num_blocks`` MobileNetConvBlocks (the authors have one, named ``conv_block``)."""
  features: int = 32
  num_blocks: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(momentum=self.momentum, axis_name=self.axis_name, dtype=self.dtype,
              param_dtype=self.param_dtype, precision=self.precision)
    for i in range(self.num_blocks):
      name = "conv_block" if i == 0 else f"conv_block{i + 1}"
      x = MobileNetConvBlock(features=self.features, name=name, **kw)(x, train)
    return x


class MobileNetDecoderStage(_Base):
  """Nearest upsampling, BN + leaky ReLU, 1x1 conv (``conv1``), concat [up, skip], one block."""
  features: int = 32
  factors: Tuple[int, int] = (2, 2)

  @nn.compact
  def __call__(self, x, skip, train: bool):
    ft, ff = self.factors
    h = jnp.repeat(jnp.repeat(x, ft, axis=1), ff, axis=2)
    h = activation_fn("leaky_relu")(self.bn("bn1")(h, train))
    h = self.conv("conv1", self.features, kernel=(1, 1))(h)
    h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
    return MobileNetConvBlock(features=self.features, momentum=self.momentum,
                              axis_name=self.axis_name, dtype=self.dtype,
                              param_dtype=self.param_dtype, precision=self.precision,
                              name="conv_block2")(h, train)
