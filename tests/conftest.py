"""Shared test set-up.

Every test session runs JAX on 8 fake CPU devices (the data-parallel and multi-process tests need
several; single-device tests simply use the first). Tests that need the authors' data read it from
../shared (or $RESUNET_SHARED) and skip with the reason when it is absent.
"""
import os
import sys

import resunet_jax  # noqa: F401  (sets the XLA:CPU flags before JAX starts its backend)
import jax

jax.config.update("jax_num_cpu_devices", 8)
# TensorFlow (tf.data) must never take an accelerator from JAX.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")
  config.addinivalue_line("markers", "parity: compares with the authors' PyTorch outputs")
