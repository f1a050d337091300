"""UNet backbones: (B, T, F, C_in) spectrogram features -> (B, T, F, channels[0]).

A backbone is a function ``backbone(model, x, train)`` that builds its layers inside the calling
``Separator`` (so parameter paths are ``encoder_block1/...`` at the top level, as the authors'
state-dict keys are) from the model's fields: ``channels``, ``pools``, ``blocks_per_stage``,
``center_blocks``, ``second_norm``, ``decoder_activation`` and the shared layer fields
(``model.layer_fields()``). ``Separator.backbone`` names one of ``BACKBONES``; a new backbone is a
function decorated with ``@register("name")`` (in a module of one's own: the command-line tools
import it with ``--import=<module>``; a saved model records the module, ``module_of``).
"""
from resunet_jax import layers

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
  (upsampling + skip + ResStage), a post stage. 143 layers with the presets' sizes."""
  kw = model.layer_fields()
  skips = []
  for i, (features, pool) in enumerate(zip(model.channels, model.pools)):
    h = layers.ResStage(features=features, num_blocks=model.blocks_per_stage,
                        second_norm=model.second_norm, name=f"encoder_block{i + 1}", **kw)(x, train)
    skips.append(h)
    x = layers.avg_pool(h, pool)
  center = len(model.channels) + 1
  for i in range(model.center_blocks):
    x = layers.ResStage(features=model.channels[-1], num_blocks=model.blocks_per_stage,
                        second_norm=model.second_norm,
                        name=f"conv_block{center}{chr(ord('a') + i)}", **kw)(x, train)
  for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(model.pools))):
    x = layers.DecoderStage(features=skip.shape[-1], factors=tuple(pool),
                            num_blocks=model.blocks_per_stage, second_norm=model.second_norm,
                            input_activation=model.decoder_activation,
                            name=f"decoder_block{i + 1}", **kw)(x, skip, train)
  return layers.ResStage(features=model.channels[0], num_blocks=model.blocks_per_stage,
                         second_norm=model.second_norm, name="after_conv_block1", **kw)(x, train)


@register("mobilenet")
def mobilenet(model, x, train):
  """The MobileNet UNet of REFERENCE §4.5 (one MobileNetConvBlock per stage in the preset)."""
  kw = model.layer_fields()
  skips = []
  for i, (features, pool) in enumerate(zip(model.channels, model.pools)):
    h = layers.MobileNetEncoderStage(features=features, num_blocks=model.blocks_per_stage,
                                     name=f"encoder_block{i + 1}", **kw)(x, train)
    skips.append(h)
    x = layers.avg_pool(h, pool)
  center = f"conv_block{len(model.channels) + 1}"
  for i in range(model.center_blocks):
    name = center if model.center_blocks == 1 else center + chr(ord("a") + i)
    x = layers.MobileNetConvBlock(features=model.channels[-1], name=name, **kw)(x, train)
  for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(model.pools))):
    x = layers.MobileNetDecoderStage(features=skip.shape[-1], factors=tuple(pool),
                                     name=f"decoder_block{i + 1}", **kw)(x, skip, train)
  return layers.MobileNetConvBlock(features=model.channels[0], name="after_conv_block1",
                                   **kw)(x, train)
