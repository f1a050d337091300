"""resunet_jax: decoupled magnitude/phase ResUNet music source separation in JAX/Flax.

Kong, Cao, Liu, Choi, Wang, "Decoupling Magnitude and Phase Estimation with Deep ResUNet for
Music Source Separation", ISMIR 2021 (arXiv 2109.05418). Submodules are imported on demand:
``models``, ``masks``, ``spectral``, ``pqmf``, ``convert``, ``checkpoint``, ...
"""
import os as _os

__version__ = "0.1.0"

# XLA:CPU runs this model's convolutions 2-3.5x faster through YNNPACK ("dot" library fusions
# cover convolutions too): measured 3x3 32->32 conv on (1, 4032, 256, 32): 280 -> 145 ms; 1x1:
# 170 -> 49 ms. Its "reduce" fusions make BatchNorm's training pass 4.5x faster (MobileNet train
# step at batch 1: 1.12 -> 0.77 s). Float64 convolutions get ~10x slower with it: float64 work
# should set RESUNET_XLA_DEFAULTS=0. XLA reads XLA_FLAGS when its CPU backend starts, so this only takes effect if
# resunet_jax is imported before JAX runs its first computation. RESUNET_XLA_DEFAULTS=0 opts out;
# an explicit --xla_cpu_experimental_ynn_fusion_type in XLA_FLAGS wins.
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"


def _set_default_xla_flags():
  if _os.environ.get("RESUNET_XLA_DEFAULTS", "1") == "0":
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  if "ynn_fusion_type" not in flags:
    _os.environ["XLA_FLAGS"] = (flags + " " + CPU_XLA_FLAGS).strip()


_set_default_xla_flags()
