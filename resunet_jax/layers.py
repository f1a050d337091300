"""Building blocks of the ResUNet and MobileNet separators (channels-last: (B, T, F, C)).

Every layer is plain Flax/XLA: convolutions are ``nn.Conv`` (``lax.conv_general_dilated``; the
MobileNet's depthwise convolution through ``feature_group_count``), so every JAX transformation
(``jvp``, ``vmap``, ``linearize``, ``grad`` of ``grad``) works on the model on every platform. A
different convolution function can be injected through ``nn.Conv``'s own hook
(``conv_general_dilated_cls``) by naming a backend in ``conv_backend`` (see
``resunet_jax.backends``); the default is XLA's own.

Parameter names follow the authors' PyTorch modules (``bn1``, ``conv1``, ``abn2``, ``shortcut``,
``conv_block1`` ...), so a state-dict key maps onto a Flax path by replacing dots with slashes.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resunet_jax import backends

Dtype = Any

LEAKY_SLOPE = 0.01
# The authors' Conv2d weights are Xavier-uniform (gain 1), biases zero (REFERENCE §4.7). On HWIO
# kernels flax's variance scaling takes fan_in = in*kh*kw and fan_out = out*kh*kw, as PyTorch does
# (also for the depthwise kernel (3, 3, 1, C): fan_in 9, fan_out 9 C).
conv_init = nn.initializers.xavier_uniform()

ACTIVATIONS = {
    "leaky_relu": lambda x: nn.leaky_relu(x, LEAKY_SLOPE),
    "relu": nn.relu,
}


def activation_fn(name):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def axis_mean(x, axis_name):
  """``lax.pmean(x, axis_name)``, skipped where the axis has one device (a static size): XLA keeps
  an all-reduce over one device as a copy (the paper model's gradients: 410 MB per step)."""
  if axis_name is None or lax.axis_size(axis_name) == 1:
    return x
  return lax.pmean(x, axis_name)


def _synchronised(axis_name):
  return axis_name is not None and lax.axis_size(axis_name) > 1


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch's semantics, synchronised over ``axis_name`` when it is set.

  ``momentum`` is PyTorch's: running <- (1 - momentum) * running + momentum * batch statistic,
  the running variance taking the unbiased batch variance, normalisation the biased one.

  With ``axis_name`` (inside ``shard_map``/``pmap``) the statistics are those of the global batch
  (like SyncBatchNorm), from ONE all-reduce per layer: every device averages the first and second
  moments of x - c, stacked, where c is the (replicated, not differentiated) running mean, and
  var = E[(x - c)^2] - E[x - c]^2. Exact in real arithmetic for any c; c close to the batch mean
  keeps float32 cancellation small. On one device (no collective needed) the two-pass
  mean-then-variance is used.

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
      if _synchronised(self.axis_name):
        shift = lax.stop_gradient(running_mean.value.astype(stat_dtype))
        centred = xs - shift.reshape(shape)
        moments = jnp.stack([jnp.mean(centred, axis=reduce_axes),
                             jnp.mean(jnp.square(centred), axis=reduce_axes)])
        first, second = lax.pmean(moments, self.axis_name)
        mean = shift + first
        var = jnp.maximum(second - jnp.square(first), 0.0)
        count = count * lax.axis_size(self.axis_name)
      else:
        mean = jnp.mean(xs, axis=reduce_axes)
        var = jnp.mean(jnp.square(xs - mean.reshape(shape)), axis=reduce_axes)
      if not self.is_initializing():
        unbiased = var * (count / max(count - 1, 1))
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
  conv_backend: str = "xla"

  def shared(self, **overrides):
    """The shared fields, for building a sub-block."""
    fields = dict(activation=self.activation, momentum=self.momentum, axis_name=self.axis_name,
                  dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                  conv_backend=self.conv_backend)
    fields.update(overrides)
    return fields

  def bn(self, name, activation=None, momentum=None):
    return BatchNorm(momentum=self.momentum if momentum is None else momentum,
                     axis_name=self.axis_name, activation=activation, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def conv(self, name, features, kernel=(3, 3), groups=1, bias=False):
    """Stride-1 "SAME" convolution (PyTorch's padding k // 2 for odd kernels)."""
    return conv(features, kernel, groups=groups, bias=bias, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision,
                backend=self.conv_backend, name=name)


def conv(features, kernel=(3, 3), *, groups=1, bias=False, dtype=None, param_dtype=jnp.float32,
         precision=None, backend="xla", name=None):
  """``nn.Conv`` with the authors' initialisation, stride 1, "SAME" padding, HWIO kernel."""
  return nn.Conv(features, tuple(kernel), padding="SAME", feature_group_count=groups,
                 use_bias=bias, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype,
                 precision=precision, conv_general_dilated_cls=backends.conv_general_dilated_cls(
                     backend), name=name)


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
                       name=f"conv_block{i + 1}", **self.shared())(x, train)
    return x


def avg_pool(x, pool):
  if tuple(pool) == (1, 1):
    return x
  return nn.avg_pool(x, tuple(pool), strides=tuple(pool), padding="VALID")


def upsample_conv(x, kernel, precision=None):
  """Transposed conv with kernel = stride (no overlap): out[b, s_t i + a, s_f j + c, o] =
  sum_ch x[b, i, j, ch] W[a, c, ch, o] for a kernel W (s_t, s_f, in, out).

  Written as what it is, one matmul to (B, T, F, s_t, s_f, O) and an interleaving transpose:
  plain XLA ops on every platform (their gradients are matmuls too), exact, and cheaper than a
  strided transposed convolution that multiplies inserted zeros.
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
                       name=f"conv_block{2 + i}", **self.shared())(h, train)
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
    for i in range(self.num_blocks):
      name = "conv_block" if i == 0 else f"conv_block{i + 1}"
      x = MobileNetConvBlock(features=self.features, name=name, **self.shared())(x, train)
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
    return MobileNetConvBlock(features=self.features, name="conv_block2",
                              **self.shared())(h, train)
