"""Separating files: formats, rates, channels, streaming resampling, atomic outputs, clear errors."""
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from resunet_jax import audio
from resunet_jax import checkpoint
from resunet_jax import models
from resunet_jax import separate
from resunet_jax.cli import separate as separate_cli

SMALL = dict(width=0.125, levels=3, blocks_per_stage=1, center_blocks=1)
# Random weights from the "rbg" generator: compiling a model's init with the default threefry
# generator takes ~35 s on 2 cores, with rbg ~6 s; the weights' values do not matter here.
def init_key():
  return jax.random.key(0, impl="rbg")
CHUNK = ["--chunk_seconds", "1", "--overlap_seconds", "0.25", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  model = models.build_model("mobilenet_subbandtime", **SMALL)
  variables = models.init_variables(model, init_key())
  path = str(tmp_path_factory.mktemp("model") / "vocals")
  return checkpoint.save_model(path, model, variables, arch="mobilenet_subbandtime",
                               sources=["vocals"])


@pytest.fixture(scope="module")
def separator(model_dir):
  model, variables, desc = checkpoint.load_model(model_dir)
  return separate.SongSeparator.from_model(model, variables, desc["sources"], chunk_seconds=1.0,
                                           overlap_seconds=0.25)


def music(seconds, rate=44100, channels=2, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  x = sum(0.1 * np.sin(2 * np.pi * f * t + p) for f, p in rng.uniform(50, 3000, (6, 2)))
  x = np.stack([x * g for g in np.linspace(1.0, 0.6, channels)], 1)
  return (x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)


def files_under(path):
  return sorted(os.path.relpath(os.path.join(r, f), path)
                for r, _, fs in os.walk(path) for f in fs) if os.path.exists(path) else []


def ffmpeg_encode(x, rate, path, codec=()):
  proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(rate),
                         "-ac", str(x.shape[1]), "-i", "-", *codec, path], input=x.tobytes(),
                        capture_output=True, check=False)
  if proc.returncode:
    pytest.skip(f"ffmpeg cannot write {os.path.splitext(path)[1]}: {proc.stderr.decode()[-200:]}")
  return path


# -- resampling and reading ----------------------------------------------------------------------


@pytest.mark.parametrize("rates", [(48000, 44100), (44100, 48000), (22050, 44100), (8000, 44100),
                                   (44100, 11025)])
def test_streaming_resampler_equals_resample_poly(rates):
  x = np.random.default_rng(0).standard_normal((5000, 2))
  up, down = audio._ratio(*rates)  # pylint: disable=protected-access
  expected = signal.resample_poly(x, up, down, axis=0)
  for block in (1, 333, 5000):
    if block == 1 and rates[0] > 40000:
      continue  # block size 1 is covered by the slower rates; it is slow at 48 kHz
    got = np.concatenate(list(audio.resample_stream(
        (x[i:i + block] for i in range(0, len(x), block)), *rates, channels=2)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)  # float32 output of float64 maths


def test_reading_lossless_files_gives_the_written_samples(tmp_path):
  x = music(1.5, rate=48000, channels=1)
  sf.write(tmp_path / "a.flac", x, 48000, subtype="PCM_24")
  sf.write(tmp_path / "b.wav", music(0.5), 44100, subtype="FLOAT")
  info = audio.probe(tmp_path / "a.flac")
  assert (info.sample_rate, info.channels, info.frames, info.backend) == (48000, 1, 72000,
                                                                           "soundfile")
  got = np.concatenate(list(audio.open_audio(tmp_path / "a.flac").blocks(1000)))
  np.testing.assert_allclose(got, x, atol=2 ** -23)
  got, rate = audio.read_audio(tmp_path / "b.wav")
  np.testing.assert_array_equal(got, music(0.5))
  assert rate == 44100


def test_ffmpeg_decodes_containers_soundfile_cannot_read(tmp_path):
  from resunet_jax.data import stems_io  # pylint: disable=g-import-not-at-top
  stempeg = pytest.importorskip("stempeg")
  path = stempeg.example_stem_path()
  info = audio.probe(path)
  assert (info.backend, info.sample_rate, info.channels) == ("ffmpeg", 44100, 2)
  got = np.concatenate(list(audio.open_audio(path).blocks(10_000)))
  mixture = stems_io.read_stem_file(path)["mixture"]  # stream 0, decoded to int16
  assert got.shape[0] >= mixture.shape[0] and abs(got.shape[0] - info.frames) < 2048
  # ffmpeg's float decode and its int16 conversion differ by at most half an LSB, where the int16
  # one is not clipped (the AAC decoder overshoots full scale at one sample of this excerpt).
  clipped = np.clip(got[:len(mixture)], -1.0, 32767 / 32768)
  np.testing.assert_allclose(clipped, mixture / 32768.0, atol=0.5 / 32768 + 1e-7)


# -- separating files ----------------------------------------------------------------------------


def test_a_file_separates_like_the_array(separator, tmp_path):
  x = music(3.3)
  sf.write(tmp_path / "song.wav", x, 44100, subtype="FLOAT")
  paths = separator.separate_file(tmp_path / "song.wav", tmp_path / "out", subtype="FLOAT",
                                  residual=True, block_frames=4096)
  assert sorted(paths) == ["accompaniment", "vocals"]
  expected = separator.separate(x, residual=True)
  for name, p in paths.items():
    y, rate = sf.read(p, dtype="float32")
    assert rate == 44100 and y.shape == x.shape
    np.testing.assert_array_equal(y, expected[name])
  assert files_under(tmp_path / "out") == ["song/accompaniment.wav", "song/vocals.wav"]


def test_mono_file_at_another_rate_keeps_its_rate_channels_and_length(separator, tmp_path):
  x = music(2.7, rate=22050, channels=1)[:, 0]
  sf.write(tmp_path / "mono.flac", x, 22050, subtype="PCM_24")
  paths = separator.separate_file(tmp_path / "mono.flac", tmp_path / "out", ext=".flac",
                                  subtype="PCM_24", block_frames=5000)
  y, rate = sf.read(paths["vocals"], dtype="float32")
  assert rate == 22050 and y.shape == x.shape
  # The file path resamples block by block, the array path in one go: same filter, same result
  # up to float rounding and the 24-bit output (measured 1e-7).
  expected = separator.separate(sf.read(tmp_path / "mono.flac", dtype="float32")[0],
                                sample_rate=22050)["vocals"]
  np.testing.assert_allclose(y, expected, atol=1e-5)
  assert np.abs(y).max() > 1e-3  # the model's output is not silence


def test_cli_separates_mp3_stem_mp4_and_folders_and_refuses_to_overwrite(model_dir, tmp_path,
                                                                         capsys):
  stempeg = pytest.importorskip("stempeg")
  folder = tmp_path / "in"
  folder.mkdir()
  shutil.copy(stempeg.example_stem_path(), folder / "falcon.stem.mp4")
  ffmpeg_encode(music(2.0, rate=32000), 32000, str(folder / "tune.mp3"))
  (folder / "notes.txt").write_text("not audio, not picked up from a folder")
  out = tmp_path / "out"
  assert separate_cli.main([str(folder), "--checkpoint", model_dir, "--out", str(out), "--residual",
                        "--format", "flac"] + CHUNK) == 0
  assert files_under(out) == ["falcon/accompaniment.flac", "falcon/vocals.flac",
                              "tune/accompaniment.flac", "tune/vocals.flac"]
  for song in ("falcon.stem.mp4", "tune.mp3"):
    info = audio.probe(folder / song)
    name = separate.song_name(song)
    written = sf.info(str(out / name / "vocals.flac"))
    assert (written.samplerate, written.channels) == (info.sample_rate, info.channels)
    decoded = len(audio.read_audio(folder / song)[0])
    assert written.frames == decoded
  before = {f: os.path.getmtime(out / f) for f in files_under(out)}
  capsys.readouterr()
  assert separate_cli.main([str(folder / "tune.mp3"), "--checkpoint", model_dir, "--out", str(out),
                        "--residual"] + CHUNK) == 0  # wav outputs: new files, allowed
  assert separate_cli.main([str(folder / "tune.mp3"), "--checkpoint", model_dir, "--out", str(out),
                        "--format", "flac"] + CHUNK) == 2
  assert "vocals.flac exists" in capsys.readouterr().err
  assert all(os.path.getmtime(out / f) == t for f, t in before.items())
  assert separate_cli.main([str(folder / "tune.mp3"), "--checkpoint", model_dir, "--out", str(out),
                        "--format", "flac", "--force"] + CHUNK) == 0
  assert os.path.getmtime(out / "tune" / "vocals.flac") > before["tune/vocals.flac"] - 1e-9


def _bad_input(kind, tmp_path):
  path = tmp_path / {"garbage": "garbage.wav", "empty": "empty.wav", "short": "short.wav",
                     "channels": "surround.wav", "missing": "missing.wav",
                     "empty_folder": "nothing"}[kind]
  if kind == "garbage":
    path.write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
  elif kind == "empty":
    sf.write(path, np.zeros((0, 2), np.float32), 44100)
  elif kind == "short":
    sf.write(path, np.zeros((500, 2), np.float32), 44100)
  elif kind == "channels":
    sf.write(path, np.zeros((44100, 3), np.float32), 44100)
  elif kind == "empty_folder":
    path.mkdir()
  return path


@pytest.mark.parametrize("kind,message", [
    ("garbage", "not a readable audio file"), ("empty", "contains no audio samples"),
    ("short", "too short: 500 samples"), ("channels", "has 3 channels"),
    ("missing", "file not found"), ("empty_folder", "folder contains no audio files")])
def test_bad_inputs_give_clear_errors_and_write_nothing(model_dir, tmp_path, capsys, kind,
                                                        message):
  good = tmp_path / "good.wav"
  sf.write(good, music(1.2), 44100)
  bad = _bad_input(kind, tmp_path)
  out = tmp_path / "out"
  assert separate_cli.main([str(good), str(bad), "--checkpoint", model_dir, "--out",
                        str(out)] + CHUNK) == 2
  err = capsys.readouterr().err
  assert f"{bad}: {message}" in err, err
  assert files_under(out) == []


def test_too_short_stream_found_while_decoding_writes_nothing(model_dir, tmp_path, capsys):
  # ffmpeg-decoded files have no exact length up front: the check happens at the end of the stream.
  # (ALAC: lossless, so the 441 samples decode to exactly 441; AAC would pad to a 1024 frame.)
  short = ffmpeg_encode(music(0.01), 44100, str(tmp_path / "blip.m4a"), ("-c:a", "alac"))
  assert audio.probe(short).backend == "ffmpeg"
  out = tmp_path / "out"
  assert separate_cli.main([short, "--checkpoint", model_dir, "--out", str(out)] + CHUNK) == 1
  assert "blip.m4a: too short" in capsys.readouterr().err
  assert files_under(out) == []


def test_a_checkpoint_that_is_not_a_model_is_refused(tmp_path, capsys):
  sf.write(tmp_path / "a.wav", music(1.0), 44100)
  (tmp_path / "empty").mkdir()
  assert separate_cli.main([str(tmp_path / "a.wav"), "--checkpoint", str(tmp_path / "empty"),
                        "--out", str(tmp_path / "out")]) == 2
  assert f"{tmp_path / 'empty'}: not a usable checkpoint" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_failure_mid_song_leaves_no_file(separator, tmp_path):
  sf.write(tmp_path / "song.wav", music(4.0), 44100)
  calls = []

  def failing(x):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError("device lost")
    return separator.chunk_fn(x)

  broken = separate.SongSeparator(failing, separator.sources, separator.plan,
                                  min_length=separator.min_length)
  with pytest.raises(RuntimeError, match="device lost"):
    broken.separate_file(tmp_path / "song.wav", tmp_path / "out" / "new", block_frames=8192)
  assert len(calls) == 3
  assert not (tmp_path / "out").exists()  # no outputs, no temporary files, no new folders


def test_atomic_writer(tmp_path):
  target = tmp_path / "x.wav"
  with audio.AtomicAudioWriter(target, 44100, 2) as w:
    w.write(np.full((10, 2), 2.0, np.float32))  # clipped, not wrapped around
    assert not target.exists()
    w.commit()
  np.testing.assert_allclose(sf.read(target)[0], 32767 / 32768)
  with pytest.raises(FileExistsError, match="x.wav exists"):
    audio.AtomicAudioWriter(target, 44100, 2)
  with pytest.raises(ZeroDivisionError):
    with audio.AtomicAudioWriter(tmp_path / "y.flac", 44100, 1, subtype="PCM_24") as w:
      w.write(np.zeros((10, 1), np.float32))
      raise ZeroDivisionError
  assert files_under(tmp_path) == ["x.wav"]
