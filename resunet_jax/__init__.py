"""resunet_jax: decoupled magnitude/phase ResUNet music source separation in JAX/Flax.

Kong, Cao, Liu, Choi, Wang, "Decoupling Magnitude and Phase Estimation with Deep ResUNet for
Music Source Separation", ISMIR 2021 (arXiv 2109.05418). Submodules are imported on demand:
``models``, ``masks``, ``spectral``, ``pqmf``, ``convert``, ``checkpoint``, ...

Importing the package changes nothing in the process (no environment variables, no JAX
configuration); the command-line tools set their XLA flags themselves (``resunet_jax.runtime``).
"""
__version__ = "0.2.0"
