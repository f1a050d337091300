"""Convolution backends: which function computes the model's convolutions.

The model's convolutions are ``flax.linen.Conv`` layers; a backend is a drop-in replacement for
``lax.conv_general_dilated`` handed to them through ``nn.Conv``'s own hook
(``conv_general_dilated_cls``). Chosen by name with the model field ``conv_backend`` (config
``model.conv_backend``, command-line ``--conv_backend``):

  "xla"  (default) XLA's own convolution on every platform.
  "cpu"  ``resunet_jax.backends.cpu``: XLA:CPU-friendly rewrites for CPU hosts (separating songs,
         the quick start); same values, plain XLA ops, every JAX transformation still works.

The backend is a runtime choice, not part of the architecture: it is not saved with a model and
does not change any parameter. The library and training default to "xla"; the separation and
evaluation tools default to ``AUTO`` ("auto": "cpu" when JAX's default backend is the CPU, else
"xla"): on a CPU the MobileNet's 10 s forward pass takes ~8 s with XLA's grouped convolution and
~0.9 s with the "cpu" backend (measured on a busy 2-core Xeon).
"""
import functools
import importlib

# name -> module that defines ``conv_general_dilated`` (None: lax.conv_general_dilated itself).
BACKENDS = {"xla": None, "cpu": "resunet_jax.backends.cpu"}


AUTO = "auto"


def resolve(name, platform=None):
  """``name``, with "auto" replaced by "cpu" on CPU hosts and "xla" elsewhere (``platform``:
  where the model will run, default JAX's default backend)."""
  if name == AUTO:
    if platform is None:
      import jax  # pylint: disable=g-import-not-at-top
      platform = jax.default_backend()
    return "cpu" if platform == "cpu" else "xla"
  check(name)
  return name


def check(name):
  if name not in BACKENDS:
    raise ValueError(f"unknown conv_backend {name!r}; expected one of {sorted(BACKENDS)}")


@functools.lru_cache(maxsize=None)
def conv_general_dilated_cls(name):
  """What ``nn.Conv(conv_general_dilated_cls=...)`` takes for backend ``name``: None for XLA's
  own, else a zero-argument callable returning the backend's ``conv_general_dilated``."""
  check(name)
  module = BACKENDS[name]
  if module is None:
    return None
  return lambda: importlib.import_module(module).conv_general_dilated
