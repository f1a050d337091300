"""The musdb18 TFDS builder and the stems readers: formats, splits, partial dirs, bad files."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import stempeg
import tensorflow_datasets as tfds

from data_fixtures import data_config, ffmpeg_decode_s16, mini  # pylint: disable=unused-import
from resunet_jax import sources
from resunet_jax.data import musdb18
from resunet_jax.data import stems_io
from resunet_jax.data import synthetic
from resunet_jax.data import tracklists

EXAMPLE = synthetic.EXAMPLE_TRACK
SR = sources.SAMPLE_RATE


def _read_split(builder, split):
  return {ex["name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


# ---------------------------------------------------------------------------------------------
# Track lists.


def test_official_track_lists_have_release_sizes():
  assert len(set(tracklists.ALL_TRACKS)) == 150
  assert len(set(tracklists.TRAIN_TRACKS)) == 100 and len(set(tracklists.TEST_TRACKS)) == 50
  validation = tracklists.validation_tracks()
  assert len(set(validation)) == 14 and set(validation) <= set(tracklists.TRAIN_TRACKS)
  assert tracklists.official_subset(EXAMPLE) == "test"


# ---------------------------------------------------------------------------------------------
# Decoding.


def test_stempeg_excerpt_decodes_to_ffmpegs_int16_in_musdb_stream_order():
  path = stempeg.example_stem_path()
  stems = stems_io.read_stem_file(path)
  assert list(stems) == ["mixture", "drums", "bass", "other", "vocals"]
  reference, rate = stempeg.read_stems(path)  # float decode, (5, samples, 2), musdb order.
  assert rate == SR
  for i, name in enumerate(stems_io.STEM_NAMES):
    assert stems[name].dtype == np.int16 and stems[name].shape == (268288, 2)
    np.testing.assert_array_equal(stems[name], ffmpeg_decode_s16(path, i))
    # int16 = clip(round(float * 32768)) of stempeg's float decode, exactly.
    expected = np.clip(np.round(reference[i] * 32768.0), -32768, 32767)
    np.testing.assert_array_equal(stems[name], expected)
  # Stream 0 is the mixture: of the five streams it is the only one close to the sum of the other
  # four (measured: 0.17 relative RMS error for stream 0, the release's mixture is not an exact
  # sum; 2.8 to 4.5 for the others).
  streams = [stems[s].astype(np.float64) for s in stems_io.STEM_NAMES]
  rel_err = [np.sqrt(np.mean((streams[i] - (sum(streams) - streams[i])) ** 2)) /
             np.sqrt(np.mean(streams[i] ** 2)) for i in range(5)]
  assert rel_err[0] < 0.25 and min(rel_err[1:]) > 1.0, rel_err


def test_wav_folder_is_read_losslessly(tmp_path):
  rng = np.random.default_rng(0)
  stems = {n: rng.integers(-32768, 32768, size=(1000, 2), dtype=np.int16)
           for n in stems_io.STEM_NAMES}
  synthetic.write_wav_folder(str(tmp_path / "t"), stems)
  got = stems_io.read_wav_folder(str(tmp_path / "t"))
  for n in stems_io.STEM_NAMES:
    np.testing.assert_array_equal(got[n], stems[n])


# ---------------------------------------------------------------------------------------------
# Building.


@pytest.mark.parametrize("variant", ["stem", "hq"])
def test_build_offline_splits_names_and_int16_storage(mini, variant):
  builder = tfds.builder(f"musdb18/{variant}", data_dir=mini["data_dir"])
  assert builder.is_prepared()
  validation = set(tracklists.validation_tracks())
  train_names = mini["names"]["train"]
  splits = builder.info.splits
  assert {s: splits[s].num_examples for s in splits} == {"train": 2, "validation": 2, "test": 2}
  tracks = builder.info.metadata["tracks"]
  assert tracks["train"] == sorted(n for n in train_names if n not in validation)
  assert tracks["validation"] == sorted(n for n in train_names if n in validation)
  assert tracks["test"] == sorted(mini["names"]["test"])
  assert len(builder.info.metadata["missing_train"]) == 96
  full = tfds.as_numpy(builder.as_dataset(split=musdb18.tfds_split("train_full", splits)))
  assert sorted(ex["name"].decode() for ex in full) == sorted(train_names)
  test = _read_split(builder, "test")
  assert list(test) == tracks["test"]  # stored in name order
  for name, ex in test.items():
    assert ex["length"] == ex["vocals"].shape[0]
    for stem in stems_io.STEM_NAMES:
      assert ex[stem].dtype == np.int16 and ex[stem].shape == (ex["length"], 2)
  # The real excerpt is stored exactly as decoded (stem) / as written to 16-bit wav (hq).
  expected = stems_io.read_stem_file(stempeg.example_stem_path())
  for stem in stems_io.STEM_NAMES:
    np.testing.assert_array_equal(test[EXAMPLE][stem], expected[stem])
  # Synthetic tracks: the stored mixture is the sum of the stored sources (AAC error for "stem").
  ex = test[mini["names"]["test"][0]]
  total = sum(ex[s].astype(np.float64) for s in sources.STEMS)
  err = np.abs(ex["mixture"] - total).max()
  assert err <= (3 if variant == "hq" else 2000), err  # hq: 5 roundings of 0.5 LSB.


def test_stored_bytes_are_16_bit(mini):
  builder = tfds.builder("musdb18/hq", data_dir=mini["data_dir"])
  samples = sum(ex["length"] for ex in _read_split(builder, "test").values())
  num_bytes = builder.info.splits["test"].num_bytes
  assert samples * 2 * 2 * 5 <= num_bytes < samples * 2 * 2 * 5 * 1.01


def test_builder_is_registered_by_importing_the_package():
  code = ("import sys, resunet_jax.data, tensorflow_datasets as tfds;"
          "assert 'tensorflow' not in sys.modules, 'importing must not load TF';"
          "b = tfds.builder_cls('musdb18'); print(b.__name__, [c.name for c in b.BUILDER_CONFIGS])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "Musdb18 ['stem', 'hq']" in out.stdout


def test_partial_manual_dir_builds_what_is_there_and_reports_the_rest(tmp_path, caplog):
  manual = tmp_path / "manual"
  (manual / "test").mkdir(parents=True)
  shutil.copyfile(stempeg.example_stem_path(), manual / "test" / (EXAMPLE + ".stem.mp4"))
  with caplog.at_level(logging.WARNING):
    builder = musdb18.build("stem", str(manual), str(tmp_path / "tfds"))
  assert list(builder.info.splits) == ["test"]
  assert builder.info.metadata["tracks"]["test"] == [EXAMPLE]
  assert len(builder.info.metadata["missing_test"]) == 49
  assert len(builder.info.metadata["missing_train"]) == 100
  text = caplog.text
  assert "building 0 train and 1 test tracks" in text and "Al James - Schoolboy Facination" in text
  with pytest.raises(ValueError, match="train_full.*no tracks"):
    musdb18.tfds_split("train_full", builder.info.splits)


def test_manual_dir_without_tracks_is_an_error_with_instructions(tmp_path):
  (tmp_path / "manual" / "train").mkdir(parents=True)
  (tmp_path / "manual" / "train" / "readme.txt").write_text("not a track")
  with pytest.raises(FileNotFoundError, match=r"No MUSDB18 tracks.*\.stem\.mp4"):
    musdb18.build("stem", str(tmp_path / "manual"), str(tmp_path / "tfds"))


def test_a_bad_file_stops_the_build_and_names_the_file(tmp_path):
  manual = tmp_path / "manual"
  (manual / "test").mkdir(parents=True)
  bad = manual / "test" / "Zeno - Signs.stem.mp4"
  bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not an mp4")
  with pytest.raises(Exception, match="Zeno - Signs.stem.mp4"):
    musdb18.build("stem", str(manual), str(tmp_path / "tfds"))


# ---------------------------------------------------------------------------------------------
# Bad files.


def _sine(seconds, rate=SR, channels=2):
  t = np.arange(int(seconds * rate)) / rate
  x = 0.2 * np.sin(2 * np.pi * 440 * t)
  return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def test_stem_file_with_a_missing_stream(tmp_path):
  path = str(tmp_path / "four.stem.mp4")
  synthetic.write_stem_mp4(path, [_sine(1)] * 4)
  with pytest.raises(stems_io.StemFileError, match=r"four\.stem\.mp4.*4 audio stream.*missing"):
    stems_io.read_stem_file(path)


def test_stem_file_with_another_sample_rate(tmp_path):
  path = str(tmp_path / "rate.stem.mp4")
  synthetic.write_stem_mp4(path, [_sine(1, 48000)] * 5, sample_rate=48000)
  with pytest.raises(stems_io.StemFileError, match=r"rate\.stem\.mp4.*48000 Hz, expected 44100"):
    stems_io.read_stem_file(path)


def test_stem_file_with_a_mono_stream(tmp_path):
  path = str(tmp_path / "mono.stem.mp4")
  synthetic.write_stem_mp4(path, [_sine(1)] * 4 + [_sine(1, channels=1)])
  with pytest.raises(stems_io.StemFileError, match=r"mono\.stem\.mp4.*stream 4 \(vocals\).*1 channel"):
    stems_io.read_stem_file(path)


def test_stem_file_with_streams_of_very_different_lengths(tmp_path):
  path = str(tmp_path / "lengths.stem.mp4")
  synthetic.write_stem_mp4(path, [_sine(1)] * 4 + [_sine(2)])
  with pytest.raises(stems_io.StemFileError, match=r"lengths\.stem\.mp4.*different lengths"):
    stems_io.read_stem_file(path)


def test_stem_file_with_slightly_different_lengths_is_cropped_to_the_shortest(tmp_path, caplog):
  path = str(tmp_path / "crop.stem.mp4")
  # 2000 samples more: one or two AAC frames more after decoding, within the tolerance.
  streams = [_sine(1)] * 4 + [np.concatenate([_sine(1), _sine(1)[:2000]])]
  synthetic.write_stem_mp4(path, streams)
  raw = [ffmpeg_decode_s16(path, i) for i in range(5)]
  assert raw[4].shape[0] > raw[0].shape[0]
  with caplog.at_level(logging.WARNING):
    stems = stems_io.read_stem_file(path)
  assert "cropping all to" in caplog.text
  for i, name in enumerate(stems_io.STEM_NAMES):
    np.testing.assert_array_equal(stems[name], raw[i][:raw[0].shape[0]])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_stem_file(tmp_path, damage):
  path = tmp_path / "corrupt.stem.mp4"
  if damage == "garbage":
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50000, dtype=np.uint8).tobytes())
  else:
    data = open(stempeg.example_stem_path(), "rb").read()
    path.write_bytes(data[:len(data) // 2])
  with pytest.raises(stems_io.StemFileError, match=r"corrupt\.stem\.mp4.*(corrupt|truncated)"):
    stems_io.read_stem_file(str(path))


def test_wav_folder_problems_name_the_file(tmp_path):
  good = {n: _sine(0.5) for n in stems_io.STEM_NAMES}
  cases = {
      "missing": ({k: v for k, v in good.items() if k != "bass"}, SR, r"missing bass\.wav"),
      "rate": (good, 22050, r"mixture\.wav: sample rate 22050 Hz, expected 44100"),
      "mono": ({**good, "other": _sine(0.5, channels=1)}, SR, r"other\.wav: 1 channel"),
      "lengths": ({**good, "drums": _sine(1.0)}, SR, r"different lengths"),
  }
  for case, (stems, rate, pattern) in cases.items():
    folder = str(tmp_path / case)
    synthetic.write_wav_folder(folder, stems, sample_rate=rate)
    with pytest.raises(stems_io.StemFileError, match=pattern) as err:
      stems_io.read_wav_folder(folder)
    assert case in str(err.value)
  folder = tmp_path / "corrupt"
  synthetic.write_wav_folder(str(folder), good)
  (folder / "vocals.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
  with pytest.raises(stems_io.StemFileError, match=r"vocals\.wav: not a readable audio file"):
    stems_io.read_wav_folder(str(folder))


def test_sliced_splits_hold_out_training_tracks(mini):
  """A set whose names are not MUSDB18's puts every train/ track into "train": slices of it give a
  validation split that is not the test set."""
  from resunet_jax.data import heldout, prepare  # pylint: disable=g-import-not-at-top
  builder = prepare.prepare(data_config(mini, "stem"))
  train = [n for n, _, _ in musdb18.split_tracks(builder, "train")]
  assert len(train) >= 2
  head = [n for n, _, _ in musdb18.split_tracks(builder, "train[:-1]")]
  tail = [n for n, _, _ in musdb18.split_tracks(builder, "train[-1:]")]
  assert head + tail == train and len(tail) == 1
  assert [n for n, _, _ in musdb18.split_tracks(builder, "train[:50%]")] == train[:len(train) // 2]
  segments = heldout.validation_segments(data_config(mini, "stem"), split="train[-1:]",
                                         num_segments=2, store=False)
  assert set(segments["names"]) == set(tail)
