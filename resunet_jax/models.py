"""Separators: waveform in, one waveform per source out, through a masked complex spectrogram.

``Separator`` is one Flax module that builds all three of the authors' architectures and smaller
ones for research and CPU runs:

  waveform (B, L, C)
   -[subbands]- PQMF analysis of every channel -> (B, C*N, Ls), channel index c*N + j
   - STFT -> |X|, cos, sin (B, Cin, T, F+1)
   - bn0 over frequency bins on |X| -> (B, T, F+1, Cin); pad T to the time-pooling multiple; drop
     the last bin
   - backbone (``backbones.BACKBONES``: ResUNet or MobileNet UNet) -> 1x1 head conv with bias
     (``after_conv2``)
   - pad the last bin back, crop T, split the head channels per (source, channel[, subband], K)
   - mask (``masks.apply_mask``) -> ISTFT (-> PQMF synthesis) -> (B, S, L, C)

Waveforms are channels-last at the public boundary. Presets are in ``ARCHITECTURES``;
``build_model(arch, **fields)`` makes one, ``model.init(rng, waveform)`` its variables: ``params``,
``batch_stats`` and, for subband models, ``constants`` (the PQMF filters, never trained: a converted
checkpoint puts the authors' filters there). The model checks its own fields when it is built and
names the offending one (``ModelFieldError``). ``describe`` / ``from_description`` turn a model into
the JSON description saved beside its variables and back.
"""
import dataclasses
import math
import typing
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from ml_collections import config_dict

from resunet_jax import backbones
from resunet_jax import backends
from resunet_jax import folding
from resunet_jax import layers
from resunet_jax import masks
from resunet_jax import pqmf
from resunet_jax import sources as sources_lib
from resunet_jax import spectral

Dtype = Any

_SIX_LEVEL_POOLS = ((2, 2),) * 5 + ((1, 2),)

ARCHITECTURES = {
    # The paper model (REFERENCE §4.2): 2048/441 STFT, InPlaceABN as the second norm of every
    # residual unit, unbounded additive magnitude term.
    "resunet143_ismir2021": dict(
        subbands=0, n_fft=2048, hop=441, backbone="resunet",
        channels=(32, 64, 128, 256, 384, 384), pools=_SIX_LEVEL_POOLS, blocks_per_stage=4,
        center_blocks=4, activation="leaky_relu", second_norm="abn", mask="decouple_plus"),
    # The released checkpoints' model (§4.3): 4 PQMF subbands, 512/110 STFT, tanh-bounded Q.
    "resunet143_subbandtime": dict(
        subbands=4, n_fft=512, hop=110, backbone="resunet",
        channels=(32, 64, 128, 256, 384, 384), pools=_SIX_LEVEL_POOLS, blocks_per_stage=4,
        center_blocks=4, activation="leaky_relu", second_norm="bn",
        mask="decouple_plus_bounded"),
    # The 0.3 M-parameter model (§4.5).
    "mobilenet_subbandtime": dict(
        subbands=4, n_fft=512, hop=110, backbone="mobilenet",
        channels=(32, 64, 64, 64, 64, 64), pools=_SIX_LEVEL_POOLS, blocks_per_stage=1,
        center_blocks=1, activation="leaky_relu", second_norm="bn",
        mask="decouple_plus_bounded"),
}

SECOND_NORMS = ("bn", "abn")
LAYOUTS = ("auto", "natural", "folded")


def resolve_layout(layout, platform=None):
  """"auto" -> "folded" on TPU (``platform``, default JAX's default backend), else "natural"."""
  if layout != "auto":
    return layout
  if platform is None:
    platform = jax.default_backend()
  return "folded" if platform == "tpu" else "natural"


def for_platform(model, platform):
  """``model`` with its "auto" runtime choices (conv backend, layout) made for ``platform``
  ("cpu", "gpu", "tpu"): what it would choose running there. Cross-compilation uses it."""
  return model.clone(conv_backend=backends.resolve(model.conv_backend, platform),
                     layout=resolve_layout(model.layout, platform))


class ModelFieldError(ValueError):
  """A Separator field (or a build_model option) has a value that cannot work; ``field`` names it."""

  def __init__(self, field, message):
    super().__init__(f"model field {field!r}: {message}")
    self.field = field


class Separator(nn.Module):
  """Spectrogram-masking source separator. See the module docstring."""
  audio_channels: int = 2
  num_sources: int = 1
  subbands: int = 0  # 0: full band; 4: PQMF time-domain subbands
  n_fft: int = 2048
  hop: int = 441
  backbone: str = "resunet"  # a key of backbones.BACKBONES
  channels: Tuple[int, ...] = (32, 64, 128, 256, 384, 384)
  pools: Tuple[Tuple[int, int], ...] = _SIX_LEVEL_POOLS
  blocks_per_stage: int = 4  # residual units per encoder / decoder / centre / post stage
  center_blocks: int = 4  # centre stages (conv_block{n+1}a, b, ...)
  activation: str = "leaky_relu"  # a key of layers.ACTIVATIONS
  second_norm: str = "bn"  # "abn": InPlaceABN (BN + leaky ReLU) in the second position
  decoder_activation: str = "relu"
  mask: str = "decouple_plus"  # a key of masks.MASKS
  bn_momentum: float = 0.01  # PyTorch convention
  dtype: Optional[Dtype] = None  # compute dtype of the UNet (e.g. "bfloat16"); front end float32+
  param_dtype: Dtype = jnp.float32
  precision: Any = None  # of the convolutions and matmuls: None, "default", "high", "highest"
  # Runtime choices (not part of the architecture, not saved with a model; the same parameters
  # and, up to rounding, the same outputs whatever they are):
  bn_axis_name: Optional[str] = None  # set inside shard_map for synchronised BatchNorm
  conv_backend: str = "auto"  # see resunet_jax.backends ("auto": "cpu" on CPU hosts, else "xla")
  # Activation layout (resunet_jax.folding): "natural" (B, T, F, C); "folded": frequency bins
  # folded into the channels up to 128 lanes and, below 8 examples per device, the frequency axis
  # split into chunks along the batch axis in training (TPU); "auto": folded when compiling for a
  # TPU.
  layout: str = "auto"
  # Rematerialisation (memory for FLOPs in training): "none", "unit", "stage" or
  # "<unit|stage>:<jax.checkpoint_policies name>" (layers.parse_remat).
  remat: str = "none"

  def __post_init__(self):
    _validate(self)
    # One form for dtypes given as names or types ("bfloat16", jnp.bfloat16): numpy dtypes.
    for field in ("dtype", "param_dtype"):
      value = getattr(self, field)
      if value is not None:
        object.__setattr__(self, field, jnp.dtype(value))
    super().__post_init__()

  @property
  def time_multiple(self):
    return int(np.prod([p[0] for p in self.pools]))

  @property
  def head_channels(self):
    return (self.num_sources * self.audio_channels * masks.num_outputs(self.mask)
            * max(self.subbands, 1))

  def layer_fields(self):
    """The fields every layer of the backbone shares (``layers._Base``)."""
    return dict(activation=self.activation, momentum=self.bn_momentum,
                axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                precision=self.precision, conv_backend=self.conv_backend, remat=self.remat)

  def _level_bins(self):
    """The frequency bins of each level's activations, then the centre's."""
    bins = [self.n_fft // 2]
    for pool in self.pools:
      bins.append(bins[-1] // pool[1])
    return bins

  def folds(self):
    """The frequency fold of each level's activations, then the centre's: all 1 in the natural
    layout; folded, each level's bins folded into its channels up to 128 lanes
    (``folding.fold_factor``)."""
    levels = len(self.channels) + 1
    if resolve_layout(self.layout) != "folded":
      return (1,) * levels
    return tuple(folding.fold_factor(self.channels[min(i, levels - 2)], bins)
                 for i, bins in enumerate(self._level_bins()))

  def chunks(self, batch, train=True):
    """The frequency chunks of the folded layout for a per-device ``batch`` in training
    (``folding.chunk_count`` over every level's folded cells); 1 in the natural layout and in
    inference. Measured on the paper model's programs for one v5e chip (compiler estimates,
    libtpu 0.0.42.1): the train step at 2 examples of 3 s moves 67.6 GB per example unchunked,
    41.0 in 4 chunks; the separation forward pass (one 30 s chunk) 63.4 unchunked, 65.1 in 8:
    without batch statistics XLA keeps its own split of the frequency axis through a whole stage,
    and chunks only add their edge terms."""
    if resolve_layout(self.layout) != "folded" or not train:
      return 1
    cells = [bins // s for bins, s in zip(self._level_bins(), self.folds())]
    return folding.chunk_count(batch, cells)

  @nn.compact
  def __call__(self, waveform, train: bool = False, return_head: bool = False):
    """(B, L, C) waveform -> (B, S, L, C) separated sources.

    With ``return_head`` it returns ``(sources, head)``, ``head`` being the head conv's output
    (B, T_pad, F, head_channels) before padding/cropping (the parity fixtures' ``head_output`` in
    channels-last layout): it localises a mismatch between the network and the mask/ISTFT stages.
    """
    if waveform.ndim != 3 or waveform.shape[-1] != self.audio_channels:
      raise ValueError(f"waveform must be (batch, samples, {self.audio_channels}), "
                       f"got {waveform.shape}")
    batch, length, chans = waveform.shape
    front_dtype = jnp.promote_types(waveform.dtype, jnp.float32)
    x = jnp.swapaxes(waveform.astype(front_dtype), 1, 2)  # (B, C, L)
    n_bands = max(self.subbands, 1)

    if self.subbands:
      ana, syn = pqmf.designed_filters(self.subbands, pqmf.NUM_TAPS)
      ana = self.variable("constants", "pqmf_analysis",
                          lambda: jnp.asarray(ana, self.param_dtype)).value
      syn = self.variable("constants", "pqmf_synthesis",
                          lambda: jnp.asarray(syn, self.param_dtype)).value
      x = pqmf.analysis(x, ana.astype(front_dtype))  # (B, C, N, Ls)
      x = x.reshape(batch, chans * n_bands, x.shape[-1])  # channel c*N + j
    signal_length = x.shape[-1]

    mag, cos, sin = spectral.magnitude_phase(spectral.stft(x, self.n_fft, self.hop))
    frames = mag.shape[2]  # mag: (B, Cin, T, F+1)

    h = jnp.transpose(mag, (0, 2, 3, 1))  # (B, T, F+1, Cin)
    # bn0 normalises every frequency bin over batch, time and channels (before the time padding).
    h = layers.BatchNorm(momentum=self.bn_momentum, feature_axis=2, axis_name=self.bn_axis_name,
                         param_dtype=self.param_dtype, name="bn0")(h, train)
    padded = int(math.ceil(frames / self.time_multiple)) * self.time_multiple
    h = jnp.pad(h, ((0, 0), (0, padded - frames), (0, 0), (0, 0)))[:, :, :-1, :]
    if self.dtype is not None:
      h = h.astype(self.dtype)

    h = backbones.get(self.backbone)(self, h, train)
    fold = chunks = 1
    if isinstance(h, backbones.Folded):
      h, fold, chunks = h
    head = layers.conv(self.head_channels, (1, 1), bias=True, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision,
                       backend=self.conv_backend, fold=fold, chunks=chunks, name="after_conv2")(h)
    head = folding.unfold(folding.unchunk(head, chunks), fold)  # (B, T_pad, F, S*C*K*N)
    raw_head = head

    head = head.astype(front_dtype)
    head = jnp.pad(head[:, :frames], ((0, 0), (0, 0), (0, 1), (0, 0)))  # (B, T, F+1, .)
    k = masks.num_outputs(self.mask)
    s, c = self.num_sources, chans
    # Head channel o = ((s*C + c)*K + k)*N + j (subband fastest; N = 1 without subbands).
    logits = head.reshape(batch, frames, head.shape[2], s, c, k, n_bands)
    logits = jnp.transpose(logits, (0, 3, 4, 6, 1, 2, 5))  # (B, S, C, N, T, F+1, K)
    shape = (batch, 1, c, n_bands, frames, mag.shape[-1])
    spec = masks.apply_mask(self.mask, logits, mag.reshape(shape), cos.reshape(shape),
                            sin.reshape(shape))  # (B, S, C, N, T, F+1)
    y = spectral.istft(spec, self.n_fft, self.hop, signal_length)  # (B, S, C, N, Ls)
    if self.subbands:
      y = pqmf.synthesis(y, syn.astype(front_dtype))  # (B, S, C, L - L mod 4)
      if y.shape[-1] < length:  # the original returns L - L mod 4 samples; keep the shape
        y = jnp.pad(y, [(0, 0)] * 3 + [(0, length - y.shape[-1])])
    else:
      y = y[:, :, :, 0]
    y = jnp.swapaxes(y, 2, 3)  # (B, S, L, C)
    return (y, raw_head) if return_head else y


# ------------------------------------------------------------------------------------------------
# Field checks.


def _check_dtype(field, value, allow_none):
  if value is None:
    if allow_none:
      return
    raise ModelFieldError(field, "must be a floating dtype, got None")
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise ModelFieldError(field, f"{value!r} is not a dtype (e.g. 'float32', 'bfloat16')") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ModelFieldError(field, f"{value!r} is not a floating dtype")


def _validate(m):
  def fail(field, message):
    raise ModelFieldError(field, message)

  def choice(field, registry, hint=""):
    value = getattr(m, field)
    if value not in registry:
      fail(field, f"{value!r} is not one of {sorted(registry)}{hint}")

  user_code = lambda what: (f" (a {what} of your own: register it in a module and import that "
                            "first; the command-line tools: --import=MODULE)")

  for field, low in (("audio_channels", 1), ("num_sources", 1), ("n_fft", 2), ("hop", 1),
                     ("blocks_per_stage", 1), ("center_blocks", 0), ("subbands", 0)):
    value = getattr(m, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      fail(field, f"must be an integer >= {low}, got {value!r}")
  if m.subbands == 1:
    fail("subbands", "must be 0 (full band) or the number of PQMF bands (>= 2), got 1")
  if m.n_fft % 2:
    fail("n_fft", f"must be even, got {m.n_fft}")
  choice("backbone", backbones.BACKBONES, user_code("backbone"))
  choice("activation", layers.ACTIVATIONS)
  choice("decoder_activation", layers.ACTIVATIONS)
  choice("second_norm", SECOND_NORMS)
  choice("mask", masks.MASKS, user_code("mask"))
  if m.conv_backend != backends.AUTO:
    choice("conv_backend", backends.BACKENDS)
  choice("layout", LAYOUTS)
  try:
    layers.parse_remat(m.remat)
  except ValueError as e:
    fail("remat", str(e))
  channels, pools = tuple(m.channels), tuple(m.pools)
  if not channels or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1
                         for c in channels):
    fail("channels", f"must be a non-empty sequence of positive integers, got {m.channels!r}")
  if len(pools) != len(channels) or any(
      len(tuple(p)) != 2 or any(not isinstance(f, (int, np.integer)) or f < 1 for f in p)
      for p in pools):
    fail("pools", f"must be one (time, frequency) pair of positive integers per level "
         f"({len(channels)} levels), got {m.pools!r}")
  if not 0.0 <= float(m.bn_momentum) <= 1.0:
    fail("bn_momentum", f"must be in [0, 1], got {m.bn_momentum}")
  _check_dtype("dtype", m.dtype, allow_none=True)
  _check_dtype("param_dtype", m.param_dtype, allow_none=False)
  if m.precision is not None and not isinstance(m.precision, (lax.Precision, tuple)):
    try:
      lax.Precision(m.precision)
    except (ValueError, TypeError):
      fail("precision", f"{m.precision!r} is not None, 'default', 'high' or 'highest'")


# ------------------------------------------------------------------------------------------------
# Presets, configs and construction.


ARCH_OPTIONS = ("width", "levels")  # build_model's shorthands on top of the Separator fields
# Fields the data decides (number of target sources, stereo audio), not config.model.
DATA_FIELDS = ("num_sources", "audio_channels")
RUNTIME_FIELDS = ("bn_axis_name", "conv_backend", "layout", "remat")


def separator_fields():
  return [f for f in dataclasses.fields(Separator) if f.name not in ("parent", "name")]


def architecture_config(arch, **overrides):
  """The Separator fields of preset ``arch`` with ``overrides`` applied (None = the preset's).

  Besides any Separator field, two shorthand overrides build smaller networks from the same blocks:
  ``width`` multiplies every channel count, ``levels`` keeps only the first encoder levels.
  """
  if arch not in ARCHITECTURES:
    raise ModelFieldError("arch", f"unknown architecture {arch!r}; expected one of "
                          f"{sorted(ARCHITECTURES)}")
  overrides = {k: v for k, v in overrides.items() if v is not None}
  fields = dict(ARCHITECTURES[arch])
  width = overrides.pop("width", 1.0)
  levels = overrides.pop("levels", None)
  known = {f.name for f in separator_fields()}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ModelFieldError(unknown[0], f"unknown model option(s) {unknown}; expected some of "
                          f"{sorted(known | set(ARCH_OPTIONS))}")
  fields.update(overrides)
  channels = tuple(fields["channels"])
  if not channels or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1
                         for c in channels):  # before width can round a 0 up to 1
    raise ModelFieldError("channels", f"must be a non-empty sequence of positive integers, got "
                          f"{fields['channels']!r}")
  pools = tuple(tuple(p) for p in fields["pools"])
  if levels is not None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or \
        not 1 <= levels <= len(channels):
      raise ModelFieldError("levels", f"must be an integer in 1..{len(channels)}, got {levels!r}")
    channels, pools = channels[:levels], pools[:levels]
  if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
    raise ModelFieldError("width", f"must be a positive number, got {width!r}")
  if width != 1.0:
    channels = tuple(max(1, int(round(c * width))) for c in channels)
  fields["channels"], fields["pools"] = channels, pools
  return fields


def build_model(arch, **overrides):
  """A ``Separator`` for preset ``arch``: ``build_model(**config.model, num_sources=...)``.

  ``overrides``: any Separator field, ``width``/``levels`` (see ``architecture_config``); None
  values mean "the preset's". An unknown or invalid option raises ``ModelFieldError`` naming it.
  """
  return Separator(**architecture_config(arch, **overrides))


_PLACEHOLDER_TYPES = {int: int, float: float, str: str, bool: bool}


def _placeholder_type(annotation):
  if annotation in _PLACEHOLDER_TYPES:
    return _PLACEHOLDER_TYPES[annotation]
  origin = typing.get_origin(annotation)
  if origin is tuple:
    return tuple
  if origin is typing.Union:  # Optional[X]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1:
      return _placeholder_type(args[0])
  return str  # dtypes and precisions are written as strings ("bfloat16", "highest")


def model_config(arch="resunet143_ismir2021", **values) -> ml_collections.ConfigDict:
  """``config.model``: the preset name, the shorthands and every configurable Separator field.

  Every value but ``arch`` defaults to None = the preset's value, so a field added to ``Separator``
  is overridable from the command line (``--config.model.<field>=...``) with no config change.
  """
  c = ml_collections.ConfigDict()
  c.arch = arch
  c.width = config_dict.placeholder(float)
  c.levels = config_dict.placeholder(int)
  for f in separator_fields():
    if f.name in DATA_FIELDS or f.name == "bn_axis_name":
      continue
    c[f.name] = config_dict.placeholder(_placeholder_type(f.type))
  for key, value in values.items():
    if key not in c:
      raise ModelFieldError(key, f"not a model option; expected some of {sorted(c.keys())}")
    c[key] = value
  return c


def count_params(params):
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


# ------------------------------------------------------------------------------------------------
# The description saved beside a model's variables.


FORMAT = "resunet_jax.model/1"


def _json_field(value):
  if isinstance(value, (tuple, list)):
    return [_json_field(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, lax.Precision):
    return value.name.lower()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return jnp.dtype(value).name  # dtypes


def describe(model, *, arch=None, sources=("vocals",), metadata=None):
  """The JSON-able description of ``model`` (its architecture fields, not the runtime ones).

  ``modules`` records the modules that registered its mask and backbone (``masks.module_of``,
  ``backbones.module_of``): loading a model whose mask or backbone is not registered names the
  module to import (``from_description``); nothing is imported from it automatically."""
  fields = {f.name: _json_field(getattr(model, f.name)) for f in separator_fields()
            if f.name not in RUNTIME_FIELDS}
  modules = {"mask": masks.module_of(model.mask), "backbone": backbones.module_of(model.backbone)}
  return {"format": FORMAT, "arch": arch, "model": fields, "sources": list(sources),
          "sample_rate": sources_lib.SAMPLE_RATE, "modules": modules, "metadata": metadata or {}}


def _unregistered(field, value, registry, module):
  """Why a saved model's mask or backbone is not there, and what to import."""
  known = f"{value!r} is not one of {sorted(registry)}"
  if not module:  # a description written before the modules were recorded
    return (f"{known}; if a module of yours registers it, import that first (the command-line "
            "tools: --import=MODULE)")
  if module == "__main__":
    return (f"{known}; the model was saved by a script that registered it itself (module "
            "'__main__'), which cannot be imported by name: move the registration into a module "
            "and import that first (the command-line tools: --import=MODULE)")
  if module.split(".")[0] == __name__.split(".")[0]:
    return f"{known}; it was registered by {module!r} of another resunet_jax version"
  return (f"{known}; the model was saved with the {field} that module {module!r} registers: "
          f"import it first (the command-line tools: --import={module}; Python: import {module})")


def from_description(desc, **overrides):
  """The ``Separator`` a description describes; ``overrides`` replace fields (e.g. ``dtype``,
  ``precision``, ``conv_backend``)."""
  if desc.get("format") != FORMAT:
    raise ValueError(f"model description has format {desc.get('format')!r}, expected {FORMAT!r}")
  fields = dict(desc["model"])
  known = {f.name for f in separator_fields()}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"model description has unknown field(s) {unknown}; this version of "
                     f"resunet_jax knows {sorted(known)}")
  defaults = {f.name: f.default for f in separator_fields()}
  recorded = desc.get("modules") or {}  # absent in descriptions written before it was recorded
  for field, registry in (("mask", masks.MASKS), ("backbone", backbones.BACKBONES)):
    value = overrides.get(field) or fields.get(field, defaults[field])
    if value not in registry:
      raise ModelFieldError(field, _unregistered(field, value, registry, recorded.get(field)))
  fields["channels"] = tuple(fields["channels"])
  fields["pools"] = tuple(tuple(p) for p in fields["pools"])
  if fields.get("precision") == "None":  # written by an older version
    fields["precision"] = None
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return Separator(**fields)


# ------------------------------------------------------------------------------------------------
# Initialisation.


def _fast_init_key(rng):
  """An 'rbg' key derived from any PRNG key.

  Flax draws every parameter with the key's generator; with the default threefry, XLA:CPU takes
  ~30 s to compile a small ResUNet's init (threefry is expanded per parameter) against ~5 s with
  XLA's RngBitGenerator ('rbg'). The derivation is deterministic: the same key gives the same
  initial variables on the same backend.
  """
  data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  data = jnp.asarray(data, jnp.uint32).reshape(-1)
  data = jnp.tile(data, 4)[:4]
  return jax.random.wrap_key_data(data, impl="rbg")


def dummy_input_length(model):
  """A short input length that every layer of ``model`` can take (shapes of the variables do not
  depend on the length)."""
  return 2 * model.hop * model.time_multiple * max(model.subbands, 1)


def init_variables(model, rng, length=None, batch=1):
  """Variables for ``model`` from a short dummy input.

  ``rng`` may be any JAX PRNG key; initialisation itself runs on an 'rbg' key derived from it
  (see ``_fast_init_key``).
  """
  if length is None:
    length = dummy_input_length(model)
  dummy = jnp.zeros((batch, length, model.audio_channels), jnp.float32)
  # The dummy input is an argument, not a closed-over constant: XLA would constant-fold the whole
  # forward pass at compile time otherwise (measured: 42 s instead of 1 s to compile).
  return jax.jit(lambda r, x: model.init(r, x, train=False))(_fast_init_key(rng), dummy)
