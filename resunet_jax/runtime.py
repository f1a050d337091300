"""Process-wide XLA settings that the command-line tools choose for themselves.

Nothing here runs on import: ``train.py``, ``eval.py`` and the ``resunet-*`` tools call
``set_xla_cpu_flags()`` first thing, before JAX starts its CPU backend. A library user decides for
their own process (call it, or set ``XLA_FLAGS`` yourself).

``CPU_XLA_FLAGS``: XLA:CPU's YNNPACK fusions for dots (which cover the model's dense
convolutions) and reductions (BatchNorm statistics). Measured on a 2-core Xeon, float32: a 3x3
32->32 convolution on (1, 4032, 256, 32) 280 -> 145 ms, 1x1 170 -> 49 ms; MobileNet train step
at batch 1 1.12 -> 0.77 s. They make float64 convolutions ~10x slower and XLA's own grouped
(depthwise) convolutions slower too (see ``resunet_jax.backends.cpu``), so float64 work should
not set them.
"""
import os

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)


def set_xla_cpu_flags(flags=CPU_XLA_FLAGS, environ=None):
  """Adds ``flags`` to ``XLA_FLAGS`` unless the user already set that flag (theirs wins).

  Takes effect only if JAX's CPU backend has not started yet in this process. Returns the new
  ``XLA_FLAGS``. ``RESUNET_XLA_DEFAULTS=0`` in the environment turns this off.
  """
  env = os.environ if environ is None else environ
  current = env.get("XLA_FLAGS", "")
  if env.get("RESUNET_XLA_DEFAULTS", "1") == "0":
    return current
  for flag in flags:
    name = flag.split("=", 1)[0]
    if name not in current:
      current = (current + " " + flag).strip()
  env["XLA_FLAGS"] = current
  return current
