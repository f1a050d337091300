"""Shared test set-up.

Every test session runs JAX on 8 fake CPU devices (the data-parallel and multi-process tests need
several; single-device tests simply use the first), with the XLA:CPU flags the command-line tools
set. Everything a test needs is in the repository (the parity fixtures in tests/fixtures) or made by
the test; nothing reads ../shared.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import remote_storage  # noqa: E402

# Before anything imports google-auth or TensorFlow: no credential search, no metadata server
# (tests never contact Google Cloud; the gs:// tests use a local emulator, tests/remote_storage.py).
remote_storage.set_safety_env()

from resunet_jax import runtime  # noqa: E402

runtime.set_xla_cpu_flags()  # as the command-line tools do, before JAX starts
import jax

jax.config.update("jax_num_cpu_devices", 8)
# TensorFlow (tf.data) must never take an accelerator from JAX.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")
  config.addinivalue_line("markers", "parity: compares with the authors' PyTorch outputs")
  config.addinivalue_line(
      "markers", "extended: a costly variant of a check the default run already makes (a second "
      "architecture, a second schedule point, a second TPU program kind); the README's and CI's "
      "command leave these out (-m 'not extended'), `-m extended` runs them")


@pytest.fixture(scope="module")
def training_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache shared by the training tests of a session (the previous
  cache setting is restored afterwards); its value is the cache directory."""
  from resunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.getbasetemp() / "jax_cache")
  previous = jax.config.jax_compilation_cache_dir
  loop.use_compilation_cache(path)
  yield path
  cc.set_cache_dir(previous)
  cc.reset_cache()
