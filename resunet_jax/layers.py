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
import inspect
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resunet_jax import backends
from resunet_jax import folding

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
  # Frequency-folded input (``resunet_jax.folding``): lanes (groups, fold, C / groups) of the last
  # axis hold the channels; the statistics of a channel are over all its lanes.
  fold: int = 1
  groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    axis = self.feature_axis % x.ndim
    s, g = self.fold, self.groups
    if s > 1 and axis != x.ndim - 1:
      raise ValueError("a folded BatchNorm normalises the last axis")
    features = x.shape[axis] // s
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

    if s > 1:  # per-lane vectors of per-channel values, and back
      lanes = lambda v: folding.lane_vector(v, s, g)
      channel_mean = lambda v: folding.channel_sum(v, s, g) / s
      shape[axis] = features * s
    else:
      lanes = channel_mean = lambda v: v

    if train:
      count = s
      for i in reduce_axes:
        count *= x.shape[i]
      if _synchronised(self.axis_name):
        shift = lax.stop_gradient(running_mean.value.astype(stat_dtype))
        centred = xs - lanes(shift).reshape(shape)
        moments = channel_mean(jnp.stack([jnp.mean(centred, axis=reduce_axes),
                                          jnp.mean(jnp.square(centred), axis=reduce_axes)]))
        first, second = lax.pmean(moments, self.axis_name)
        mean = shift + first
        var = jnp.maximum(second - jnp.square(first), 0.0)
        count = count * lax.axis_size(self.axis_name)
      else:
        mean = channel_mean(jnp.mean(xs, axis=reduce_axes))
        var = channel_mean(jnp.mean(jnp.square(xs - lanes(mean).reshape(shape)),
                                    axis=reduce_axes))
      if not self.is_initializing():
        unbiased = var * (count / max(count - 1, 1))
        m = self.momentum
        running_mean.value = ((1 - m) * running_mean.value + m * mean).astype(self.param_dtype)
        running_var.value = ((1 - m) * running_var.value + m * unbiased).astype(self.param_dtype)
    else:
      mean, var = running_mean.value, running_var.value

    mul = scale.astype(stat_dtype) * lax.rsqrt(var.astype(stat_dtype) + self.epsilon)
    add = bias.astype(stat_dtype) - mean.astype(stat_dtype) * mul
    y = xs * lanes(mul).reshape(shape) + lanes(add).reshape(shape)
    if self.activation is not None:
      y = activation_fn(self.activation)(y)
    return y.astype(self.dtype or x.dtype)


REMAT_NONE = "none"
REMAT_GRANULARITIES = ("unit", "stage")


def parse_remat(spec):
  """``(granularity, policy)`` of a ``remat`` field: "none" -> (None, None); "unit" or "stage" ->
  (that, None) (save only the inputs of each residual unit / stage, recompute the rest in the
  backward pass); "unit:<policy>" or "stage:<policy>" with a ``jax.checkpoint_policies`` name
  (e.g. "unit:dots_saveable": keep the convolution outputs, recompute BatchNorm and activations).
  Raises ValueError naming what is accepted."""
  if spec in (None, REMAT_NONE):
    return None, None
  granularity, _, policy = str(spec).partition(":")
  if granularity not in REMAT_GRANULARITIES:
    raise ValueError(f"remat {spec!r}: expected 'none', one of {list(REMAT_GRANULARITIES)}, or "
                     "'<granularity>:<jax.checkpoint_policies name>'")
  if not policy:
    return granularity, None
  fn = getattr(jax.checkpoint_policies, policy, None)
  if fn is None or not callable(fn) or policy in _POLICY_FACTORIES:
    names = sorted(n for n in dir(jax.checkpoint_policies)
                   if not n.startswith("_") and n not in _POLICY_FACTORIES)
    raise ValueError(f"remat {spec!r}: {policy!r} is not a jax.checkpoint_policies policy; "
                     f"expected one of {names}")
  return granularity, fn


# jax.checkpoint_policies entries that make a policy from arguments (not usable by name alone).
_POLICY_FACTORIES = ("offload_dot_with_no_batch_dims", "save_and_offload_only_these_names",
                     "save_any_names_but_these", "save_anything_except_these_names",
                     "save_from_both_policies", "save_only_these_names")


def rematted(cls, spec, granularity, num_static):
  """``cls`` wrapped in ``nn.remat`` when ``spec`` asks for it at ``granularity``; the module's last
  ``num_static`` call arguments (``train``) are static. Parameter names do not change."""
  which, policy = parse_remat(spec)
  if which != granularity:
    return cls
  n_args = len(inspect.signature(cls.__call__).parameters)  # self included
  static = tuple(range(n_args - num_static, n_args))
  return nn.remat(cls, static_argnums=static, policy=policy)


class _Base(nn.Module):
  """Fields every block shares."""
  activation: str = "leaky_relu"
  momentum: float = 0.01
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  conv_backend: str = "xla"
  remat: str = REMAT_NONE  # see parse_remat
  fold: int = 1  # frequency fold of this block's activations (resunet_jax.folding)
  chunks: int = 1  # frequency chunks of the batch axis (resunet_jax.folding.chunk)

  def shared(self, **overrides):
    """The shared fields, for building a sub-block."""
    fields = dict(activation=self.activation, momentum=self.momentum, axis_name=self.axis_name,
                  dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                  conv_backend=self.conv_backend, remat=self.remat, fold=self.fold,
                  chunks=self.chunks)
    fields.update(overrides)
    return fields

  def bn(self, name, activation=None, momentum=None, fold=None, groups=1):
    return BatchNorm(momentum=self.momentum if momentum is None else momentum,
                     axis_name=self.axis_name, activation=activation, dtype=self.dtype,
                     param_dtype=self.param_dtype, fold=self.fold if fold is None else fold,
                     groups=groups, name=name)

  def conv(self, name, features, kernel=(3, 3), groups=1, bias=False, fold=None, in_groups=1):
    """Stride-1 "SAME" convolution (PyTorch's padding k // 2 for odd kernels)."""
    return conv(features, kernel, groups=groups, bias=bias, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision,
                backend=self.conv_backend, fold=self.fold if fold is None else fold,
                in_groups=in_groups, chunks=self.chunks, name=name)


def conv(features, kernel=(3, 3), *, groups=1, bias=False, dtype=None, param_dtype=jnp.float32,
         precision=None, backend="xla", fold=1, in_groups=1, chunks=1, name=None):
  """``nn.Conv`` with the authors' initialisation, stride 1, "SAME" padding, HWIO kernel; on a
  frequency-folded or chunked input (``fold`` > 1, ``chunks`` > 1) the same convolution computed
  on the folded grid and across chunks (``FoldedConv``, same parameters)."""
  if fold > 1 or chunks > 1:
    if groups != 1:
      raise ValueError("grouped convolutions are not computed on a folded layout")
    return FoldedConv(features, tuple(kernel), fold=fold, in_groups=in_groups, chunks=chunks,
                      use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      name=name)
  return nn.Conv(features, tuple(kernel), padding="SAME", feature_group_count=groups,
                 use_bias=bias, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype,
                 precision=precision, conv_general_dilated_cls=backends.conv_general_dilated_cls(
                     backends.resolve(backend)), name=name)


class FoldedConv(nn.Module):
  """A stride-1 "SAME" convolution (odd kernel) of a frequency-folded input: the parameters of
  ``nn.Conv`` (``kernel`` (kt, kf, C_in, C_out) HWIO, ``bias``), the kernel placed on the folded
  grid by ``folding.fold_kernel``. Input lanes (in_groups, fold, C_in / in_groups), output lanes
  (fold, C_out). ``chunks`` > 1: the input's frequency axis is split into that many chunks along
  the batch axis (``folding.chunked_conv``)."""
  features: int
  kernel_size: Tuple[int, int]
  fold: int
  in_groups: int = 1
  chunks: int = 1
  use_bias: bool = False
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kt, kf = self.kernel_size
    if kt % 2 == 0 or kf % 2 == 0:
      raise ValueError(f"FoldedConv takes odd kernels, got {self.kernel_size}")
    s = self.fold
    kernel = self.param("kernel", conv_init, (kt, kf, x.shape[-1] // s, self.features),
                        self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    folded, reach = folding.fold_kernel(kernel, s, self.in_groups)

    def conv_fn(v, w, freq_padding):
      return lax.conv_general_dilated(v, w, (1, 1), ((kt // 2, kt // 2), freq_padding),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=self.precision)

    y = folding.chunked_conv(x, folded, reach, self.chunks, conv_fn)
    if bias is not None:
      y = y + folding.lane_vector(bias, s)
    return y


class ConvBlockRes(_Base):
  """Pre-activation residual unit: BN-act-conv3x3-BN-act-conv3x3 plus (1x1-conv) shortcut.

  ``second_norm="abn"`` is the paper model's InPlaceABN in the second position (``abn2``).
  ``in_groups`` > 1: a folded input whose lanes hold that many channel groups side by side (a
  concatenation, see ``resunet_jax.folding``).
  """
  features: int = 32
  second_norm: str = "bn"
  in_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    act = activation_fn(self.activation)
    g = self.in_groups if self.fold > 1 else 1
    h = act(self.bn("bn1", groups=g)(x, train))
    h = self.conv("conv1", self.features, in_groups=g)(h)
    if self.second_norm == "abn":
      h = self.bn("abn2", activation="leaky_relu")(h, train)
    elif self.second_norm == "bn":
      h = act(self.bn("bn2")(h, train))
    else:
      raise ValueError(f"second_norm must be 'bn' or 'abn', got {self.second_norm!r}")
    h = self.conv("conv2", self.features)(h)
    if x.shape[-1] != self.features * self.fold:
      x = self.conv("shortcut", self.features, kernel=(1, 1), bias=True, in_groups=g)(x)
    elif g > 1:
      raise ValueError("a grouped folded input needs a shortcut convolution (its channel count "
                       "equals the unit's)")
    return x + h


def _unit_cls(remat):
  return rematted(ConvBlockRes, remat, "unit", num_static=1)


class ResStage(_Base):
  """``num_blocks`` ConvBlockRes units (``conv_block1`` ...); EncoderBlockRes4B without pooling."""
  features: int = 32
  num_blocks: int = 4
  second_norm: str = "bn"

  @nn.compact
  def __call__(self, x, train: bool):
    unit = _unit_cls(self.remat)
    for i in range(self.num_blocks):
      x = unit(features=self.features, second_norm=self.second_norm,
               name=f"conv_block{i + 1}", **self.shared())(x, train)
    return x


def stage_cls(cls, remat):
  """A stage class (``ResStage``, ``DecoderStage``), rematerialised when ``remat`` is per stage."""
  return rematted(cls, remat, "stage", num_static=1)


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


def upsample_conv_folded(x, kernel, fold, precision=None):
  """``upsample_conv`` of an input folded by ``fold``: returns (y, s_out), y folded by
  s_out = fold * s_f. Each folded cell becomes the same folded cell of the output (the frequency
  factor moves into the sub-positions), so only the time rows interleave."""
  b, t, q, _ = x.shape
  st = kernel.shape[0]
  wm, s_out = folding.upsample_kernel(kernel, fold)
  y = jnp.dot(x.reshape(-1, x.shape[-1]), wm, precision=precision)
  y = y.reshape(b, t, q, st, -1)
  return jnp.transpose(y, (0, 1, 3, 2, 4)).reshape(b, t * st, q, y.shape[-1]), s_out


class UpsampleConv(nn.Module):
  """PyTorch's ConvTranspose2d(k = s, padding 0, no bias) (see ``upsample_conv``); the kernel is
  stored as (kT, kF, in, out) = PyTorch's (in, out, kT, kF) weight transposed by (2, 3, 0, 1).
  On an input folded by ``fold`` > 1 the output is folded by ``out_fold``."""
  features: int
  factors: Tuple[int, int]
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  fold: int = 1
  out_fold: int = 1

  @nn.compact
  def __call__(self, x):
    ft, ff = self.factors
    kernel = self.param("kernel", conv_init, (ft, ff, x.shape[-1] // self.fold, self.features),
                        self.param_dtype)
    dtype = self.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if self.fold == 1 and self.out_fold == 1:
      return upsample_conv(x, kernel, self.precision)
    y, s = upsample_conv_folded(x, kernel, self.fold, self.precision)
    return folding.refold(y, s, self.out_fold)


class DecoderStage(_Base):
  """DecoderBlockRes4B: BN-ReLU on the input, transposed-conv upsampling, concat with the skip
  ([upsampled, skip]), then ``num_blocks`` ConvBlockRes units (``conv_block2`` ...).

  Folded (``fold`` of the skip's level, ``in_fold`` of the input's): the concatenation is of lane
  blocks, read by the first unit as two channel groups."""
  features: int = 32
  factors: Tuple[int, int] = (2, 2)
  num_blocks: int = 4
  second_norm: str = "bn"
  input_activation: str = "relu"
  in_fold: int = 1

  @nn.compact
  def __call__(self, x, skip, train: bool):
    h = activation_fn(self.input_activation)(self.bn("bn1", fold=self.in_fold)(x, train))
    h = UpsampleConv(self.features, tuple(self.factors), dtype=self.dtype,
                     param_dtype=self.param_dtype, precision=self.precision, fold=self.in_fold,
                     out_fold=self.fold, name="conv1")(h)
    groups = 1
    if self.fold > 1:
      if skip.shape[-1] != h.shape[-1]:
        raise ValueError("a folded decoder concatenates equal channel counts, got "
                         f"{h.shape[-1] // self.fold} and {skip.shape[-1] // self.fold}")
      groups = 2
    h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
    unit = _unit_cls(self.remat)
    for i in range(self.num_blocks):
      h = unit(features=self.features, second_norm=self.second_norm,
               in_groups=groups if i == 0 else 1, name=f"conv_block{2 + i}",
               **self.shared())(h, train)
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
