"""Shared test data for tests/test_data_*.py: a small MUSDB18 manual dir in both formats, built once.

Contents (both formats): train/ 2 plain + 2 validation synthetic tracks (6-9 s), test/ 1 synthetic
track (7 s) and stempeg's real 6 s MUSDB18 excerpt "The Easton Ellises - Falcon 69".
"""
import os
import subprocess

import numpy as np
import pytest

from resunet_jax.data import musdb18
from resunet_jax.data import synthetic

SECONDS = (6.0, 9.0)
_cache = {}


def mini_musdb(tmp_path_factory):
  """{"root": dir, "manual": {variant: dir}, "data_dir": tfds dir, "names": {subset: [names]}}.

  Built once per test session (a module-level cache: the fixture is imported by several modules).
  """
  if "mini" not in _cache:
    root = str(tmp_path_factory.mktemp("mini_musdb"))
    manual, names = {}, None
    for variant in ("stem", "hq"):
      manual[variant] = os.path.join(root, variant)
      names = synthetic.write_musdb18(manual[variant], variant, tracks={"train": 4, "test": 1},
                                      seconds=SECONDS, seed=7, with_example=True)
    data_dir = os.path.join(root, "tfds")
    for variant in ("stem", "hq"):
      musdb18.build(variant, manual[variant], data_dir)
    _cache["mini"] = {"root": root, "manual": manual, "data_dir": data_dir, "names": names}
  return _cache["mini"]


@pytest.fixture
def mini(tmp_path_factory):
  return mini_musdb(tmp_path_factory)


def data_config(mini_data, variant="stem", **overrides):
  from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top
  cfg = recipes.default_data_config()
  cfg.variant = variant
  cfg.manual_dir = mini_data["manual"][variant]
  cfg.data_dir = mini_data["data_dir"]
  cfg.update_from_flattened_dict(overrides)  # keys may be dotted: "augment.remix"
  return cfg


def ffmpeg_decode_s16(path, stream):
  """Independent reference: ffmpeg's own s16le decode of one audio stream."""
  raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map", f"0:a:{stream}",
                        "-f", "s16le", "-acodec", "pcm_s16le", "-"], capture_output=True,
                       check=True).stdout
  return np.frombuffer(raw, np.int16).reshape(-1, 2)
