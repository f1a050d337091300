"""Atomic writes end up with the permissions a plain open()/mkdir() gives, never private ones."""
import os
import stat

import numpy as np
import pytest

from resunet_jax import audio
from resunet_jax import fileutil


@pytest.fixture
def umask_022():
  previous = os.umask(0o022)
  yield
  os.umask(previous)


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_text_file_and_temp_dir_follow_the_umask(tmp_path, umask_022):
  path = tmp_path / "sub" / "result.json"
  with fileutil.atomic_text_file(str(path)) as f:
    f.write("{}")
    assert not path.exists()
  assert path.read_text() == "{}" and mode(path) == 0o644
  assert mode(fileutil.temp_dir(str(tmp_path), prefix="d-")) == 0o755
  os.umask(0o077)  # a private umask stays private
  with fileutil.atomic_text_file(str(tmp_path / "private.txt")) as f:
    f.write("x")
  assert mode(tmp_path / "private.txt") == 0o600


def test_a_failed_atomic_text_file_leaves_nothing_and_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("old")
  with pytest.raises(KeyError):
    with fileutil.atomic_text_file(str(path)) as f:
      f.write("new")
      raise KeyError("boom")
  assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.csv"]


def test_separated_audio_is_readable_by_others(tmp_path, umask_022):
  target = tmp_path / "vocals.wav"
  with audio.AtomicAudioWriter(target, 44100, 2) as w:
    w.write(np.zeros((10, 2), np.float32))
    w.commit()
  assert mode(target) == 0o644
