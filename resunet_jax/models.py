"""Separators: waveform in, one waveform per source out, through a masked complex spectrogram.

``Separator`` is one Flax module that builds all three of the authors' architectures and smaller
ones for research and CPU runs:

  waveform (B, L, C)
   -[subbands]- PQMF analysis of every channel -> (B, C*N, Ls), channel index c*N + j
   - STFT -> |X|, cos, sin (B, Cin, T, F+1)
   - bn0 over frequency bins on |X| -> (B, T, F+1, Cin); pad T to the time-pooling multiple; drop
     the last bin
   - ResUNet or MobileNet UNet -> 1x1 head conv with bias (``after_conv2``)
   - pad the last bin back, crop T, split the head channels per (source, channel[, subband], K)
   - mask (``masks.apply_mask``) -> ISTFT (-> PQMF synthesis) -> (B, S, L, C)

Waveforms are channels-last at the public boundary. Presets are in ``ARCHITECTURES``;
``build_model(arch, **overrides)`` makes one, ``model.init(rng, waveform)`` its variables:
``params``, ``batch_stats`` and, for subband models, ``constants`` (the PQMF filters, never trained:
a converted checkpoint puts the authors' filters there).
"""
import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resunet_jax import layers
from resunet_jax import masks
from resunet_jax import pqmf
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


class Separator(nn.Module):
  """Spectrogram-masking source separator. See the module docstring."""
  audio_channels: int = 2
  num_sources: int = 1
  subbands: int = 0  # 0: full band; 4: PQMF time-domain subbands
  n_fft: int = 2048
  hop: int = 441
  backbone: str = "resunet"  # "resunet" | "mobilenet"
  channels: Tuple[int, ...] = (32, 64, 128, 256, 384, 384)
  pools: Tuple[Tuple[int, int], ...] = _SIX_LEVEL_POOLS
  blocks_per_stage: int = 4  # residual units per encoder / decoder / centre / post stage
  center_blocks: int = 4  # centre stages (conv_block{n+1}a, b, ...)
  activation: str = "leaky_relu"
  second_norm: str = "bn"  # "abn": InPlaceABN (BN + leaky ReLU) in the second position
  decoder_activation: str = "relu"
  mask: str = "decouple_plus"
  bn_momentum: float = 0.01  # PyTorch convention
  bn_axis_name: Optional[str] = None  # set inside shard_map for synchronised BatchNorm
  dtype: Optional[Dtype] = None  # compute dtype of the UNet (e.g. bfloat16); front end float32+
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @property
  def time_multiple(self):
    return int(np.prod([p[0] for p in self.pools]))

  @property
  def head_channels(self):
    return (self.num_sources * self.audio_channels * masks.num_outputs(self.mask)
            * max(self.subbands, 1))

  def _block_kwargs(self):
    return dict(activation=self.activation, momentum=self.bn_momentum,
                axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                precision=self.precision)

  def _resunet(self, x, train):
    kw = self._block_kwargs()
    skips = []
    for i, (features, pool) in enumerate(zip(self.channels, self.pools)):
      h = layers.ResStage(features=features, num_blocks=self.blocks_per_stage,
                          second_norm=self.second_norm, name=f"encoder_block{i + 1}", **kw)(x, train)
      skips.append(h)
      x = layers.avg_pool(h, pool)
    center = len(self.channels) + 1
    for i in range(self.center_blocks):
      x = layers.ResStage(features=self.channels[-1], num_blocks=self.blocks_per_stage,
                          second_norm=self.second_norm,
                          name=f"conv_block{center}{chr(ord('a') + i)}", **kw)(x, train)
    for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(self.pools))):
      x = layers.DecoderStage(features=skip.shape[-1], factors=tuple(pool),
                              num_blocks=self.blocks_per_stage, second_norm=self.second_norm,
                              input_activation=self.decoder_activation,
                              name=f"decoder_block{i + 1}", **kw)(x, skip, train)
    return layers.ResStage(features=self.channels[0], num_blocks=self.blocks_per_stage,
                           second_norm=self.second_norm, name="after_conv_block1", **kw)(x, train)

  def _mobilenet(self, x, train):
    kw = self._block_kwargs()
    kw.pop("activation")
    skips = []
    for i, (features, pool) in enumerate(zip(self.channels, self.pools)):
      h = layers.MobileNetEncoderStage(features=features, num_blocks=self.blocks_per_stage,
                                       name=f"encoder_block{i + 1}", **kw)(x, train)
      skips.append(h)
      x = layers.avg_pool(h, pool)
    center = f"conv_block{len(self.channels) + 1}"
    for i in range(self.center_blocks):
      name = center if self.center_blocks == 1 else center + chr(ord("a") + i)
      x = layers.MobileNetConvBlock(features=self.channels[-1], name=name, **kw)(x, train)
    for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(self.pools))):
      x = layers.MobileNetDecoderStage(features=skip.shape[-1], factors=tuple(pool),
                                       name=f"decoder_block{i + 1}", **kw)(x, skip, train)
    return layers.MobileNetConvBlock(features=self.channels[0], name="after_conv_block1",
                                     **kw)(x, train)

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

    if self.backbone == "resunet":
      h = self._resunet(h, train)
    elif self.backbone == "mobilenet":
      h = self._mobilenet(h, train)
    else:
      raise ValueError(f"unknown backbone {self.backbone!r}")
    head = layers.Conv(self.head_channels, (1, 1), use_bias=True, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision,
                       name="after_conv2")(h)  # (B, T_pad, F, S*C*K*N)
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


def architecture_config(arch, **overrides):
  """The Separator fields of preset ``arch`` with ``overrides`` applied.

  Besides any Separator field, two shorthand overrides build smaller networks from the same blocks:
  ``width`` multiplies every channel count, ``levels`` keeps only the first encoder levels.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
  fields = dict(ARCHITECTURES[arch])
  width = overrides.pop("width", 1.0)
  levels = overrides.pop("levels", None)
  known = {f.name for f in dataclasses.fields(Separator)} - {"parent", "name"}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown}; expected some of {sorted(known)} "
                     "or 'width', 'levels'")
  fields.update(overrides)
  channels = tuple(fields["channels"])
  pools = tuple(tuple(p) for p in fields["pools"])
  if levels is not None:
    if not 1 <= levels <= len(channels):
      raise ValueError(f"levels must be in 1..{len(channels)}, got {levels}")
    channels, pools = channels[:levels], pools[:levels]
  if width != 1.0:
    channels = tuple(max(1, int(round(c * width))) for c in channels)
  fields["channels"], fields["pools"] = channels, pools
  return fields


def build_model(arch, **overrides):
  """A ``Separator`` for preset ``arch`` (see ``architecture_config`` for the overrides)."""
  return Separator(**architecture_config(arch, **overrides))


def count_params(params):
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


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


def init_variables(model, rng, length=None, batch=1):
  """Variables for ``model`` from a short dummy input (shapes do not depend on the length).

  ``rng`` may be any JAX PRNG key; initialisation itself runs on an 'rbg' key derived from it
  (see ``_fast_init_key``).
  """
  if length is None:
    length = 2 * model.hop * model.time_multiple * max(model.subbands, 1)
  dummy = jnp.zeros((batch, length, model.audio_channels), jnp.float32)
  # The dummy input is an argument, not a closed-over constant: XLA would constant-fold the whole
  # forward pass at compile time otherwise (measured: 42 s instead of 1 s to compile).
  return jax.jit(lambda r, x: model.init(r, x, train=False))(_fast_init_key(rng), dummy)
