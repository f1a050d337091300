"""UNet backbones: (B, T, F, C_in) spectrogram features -> (B, T, F, channels[0]).

A backbone is a function ``backbone(model, x, train)`` that builds its layers inside the calling
``Separator`` (so parameter paths are ``encoder_block1/...`` at the top level, as the authors'
state-dict keys are) from the model's fields: ``channels``, ``pools``, ``blocks_per_stage``,
``center_blocks``, ``second_norm``, ``decoder_activation`` and the shared layer fields
(``model.layer_fields()``); ``model.folds()`` gives the frequency fold of each level (all 1 in
the natural layout) and ``model.remat`` the rematerialisation. ``Separator.backbone`` names one of
``BACKBONES``; a new backbone is a function decorated with ``@register("name")`` (in a module of
one's own: the command-line tools import it with ``--import=<module>``; a saved model records the
module, ``module_of``).
"""
import typing

from resunet_jax import folding
from resunet_jax import layers


class Folded(typing.NamedTuple):
  """A backbone output in the frequency-folded layout (``resunet_jax.folding``), its frequency
  axis split into ``chunks`` along the batch axis (``folding.chunk``): the model applies its head
  on that grid, then unchunks and unfolds the (narrow) head output. A backbone may return a plain
  (B, T, F, C) array instead."""
  array: typing.Any
  fold: int
  chunks: int = 1

BACKBONES = {}


def register(name):
  """Decorator: adds a backbone function to ``BACKBONES`` under ``name``."""
  def add(fn):
    if name in BACKBONES:
      raise ValueError(f"backbone {name!r} is already registered")
    BACKBONES[name] = fn
    return fn
  return add


def module_of(name):
  """The module that registered backbone ``name`` (``fn.__module__``), recorded in a saved model's
  description; None for an unknown backbone."""
  fn = BACKBONES.get(name)
  return None if fn is None else getattr(fn, "__module__", None)


def get(name):
  try:
    return BACKBONES[name]
  except KeyError:
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}") from None


@register("resunet")
def resunet(model, x, train):
  """The ResUNet of REFERENCE §4.1-4.3: encoders (ResStage + avg-pool), centre stages, decoders
  (upsampling + skip + ResStage), a post stage. 143 layers with the presets' sizes.

  With ``model.folds()`` (the frequency-folded layout, ``resunet_jax.folding``) every level
  computes on its folded grid, its frequency axis in ``model.chunks(batch, train)`` chunks, and the
  result is returned folded (``Folded``)."""
  kw = model.layer_fields()
  folds = model.folds()  # one per level, then the centre's
  chunks = model.chunks(x.shape[0], train)
  encoder = layers.stage_cls(layers.ResStage, model.remat)
  decoder = layers.stage_cls(layers.DecoderStage, model.remat)

  def stage(cls, level, **fields):
    return cls(num_blocks=model.blocks_per_stage, second_norm=model.second_norm,
               **{**kw, "fold": folds[level], "chunks": chunks}, **fields)

  skips = []
  x = folding.chunk(folding.fold(x, folds[0]), chunks)
  for i, (features, pool) in enumerate(zip(model.channels, model.pools)):
    h = stage(encoder, i, features=features, name=f"encoder_block{i + 1}")(x, train)
    skips.append(h)
    x, s = folding.pool(h, pool, folds[i])
    x = folding.refold(x, s, folds[i + 1])
  levels = len(model.channels)
  for i in range(model.center_blocks):
    x = stage(encoder, levels, features=model.channels[-1],
              name=f"conv_block{levels + 1}{chr(ord('a') + i)}")(x, train)
  for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(model.pools))):
    level = levels - 1 - i
    x = stage(decoder, level, features=model.channels[level], factors=tuple(pool),
              input_activation=model.decoder_activation, in_fold=folds[level + 1],
              name=f"decoder_block{i + 1}")(x, skip, train)
  x = stage(encoder, 0, features=model.channels[0], name="after_conv_block1")(x, train)
  return Folded(x, folds[0], chunks) if folds[0] > 1 or chunks > 1 else x


@register("mobilenet")
def mobilenet(model, x, train):
  """The MobileNet UNet of REFERENCE §4.5 (one MobileNetConvBlock per stage in the preset).
  Always in the natural layout (its depthwise convolutions have no folded form here)."""
  kw = {**model.layer_fields(), "fold": 1}
  block = layers.rematted(layers.MobileNetConvBlock, model.remat, "unit", num_static=1)
  encoder = layers.stage_cls(layers.MobileNetEncoderStage, model.remat)
  decoder = layers.stage_cls(layers.MobileNetDecoderStage, model.remat)
  skips = []
  for i, (features, pool) in enumerate(zip(model.channels, model.pools)):
    h = encoder(features=features, num_blocks=model.blocks_per_stage,
                name=f"encoder_block{i + 1}", **kw)(x, train)
    skips.append(h)
    x = layers.avg_pool(h, pool)
  center = f"conv_block{len(model.channels) + 1}"
  for i in range(model.center_blocks):
    name = center if model.center_blocks == 1 else center + chr(ord("a") + i)
    x = block(features=model.channels[-1], name=name, **kw)(x, train)
  for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(model.pools))):
    x = decoder(features=skip.shape[-1], factors=tuple(pool),
                name=f"decoder_block{i + 1}", **kw)(x, skip, train)
  return block(features=model.channels[0], name="after_conv_block1", **kw)(x, train)
