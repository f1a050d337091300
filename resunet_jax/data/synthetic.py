"""Synthetic MUSDB18-shaped data sets: real ``.stem.mp4`` files (AAC, through ffmpeg) or wav folders.

The signals are simple but musical enough to exercise a separator: a drum kit of decaying kicks and
noise hi-hats, a bass line, a chord pad ("other") and a vibrato melody with pauses ("vocals"). Each
stem peaks at 0.2, so the mixture (their sum) never clips. Track names are real MUSDB18 names of the
requested subset (train tracks alternate between musdb's train and validation lists), so the TFDS
builder's splits come out as they would with the real data.

  write_musdb18("/tmp/musdb_mini", variant="stem", tracks={"train": 4, "test": 2}, seconds=12, seed=0)
"""
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from resunet_jax import sources
from resunet_jax.data import stems_io
from resunet_jax.data import tracklists

STEM_PEAK = 0.2
EXAMPLE_TRACK = "The Easton Ellises - Falcon 69"  # stempeg's excerpt; a MUSDB18 test track.


def _rng(seed: int, *keys) -> np.random.Generator:
  ints = [int(seed)] + [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
  return np.random.default_rng(ints)


def _envelope(n: int, sr: int, attack: float, decay: float) -> np.ndarray:
  t = np.arange(n) / sr
  return np.minimum(t / attack, 1.0) * np.exp(-t / decay)


def synthesize_track(seconds: float, seed: int, sample_rate: int = sources.SAMPLE_RATE
                     ) -> Dict[str, np.ndarray]:
  """{drums, bass, other, vocals: float32 (samples, 2)}, each peaking at STEM_PEAK."""
  rng = _rng(seed, "track")
  n = int(round(seconds * sample_rate))
  sr = sample_rate
  t = np.arange(n) / sr
  bpm = rng.uniform(80, 140)
  beat = int(sr * 60 / bpm)
  stems = {}

  # drums: kick on every beat (pitch-dropping sine), hi-hat (noise) on off-beats, panned right.
  drums = np.zeros((n, 2))
  kick_len = min(int(0.25 * sr), n)
  tk = np.arange(kick_len) / sr
  kick = np.sin(2 * np.pi * (50 * tk + 60 * (1 - np.exp(-tk * 30)) / 30)) * np.exp(-tk * 12)
  hat_len = min(int(0.05 * sr), n)
  for start in range(0, n, beat):
    m = min(kick_len, n - start)
    drums[start:start + m] += kick[:m, None] * [1.0, 0.8]
    h0 = start + beat // 2
    if h0 < n:
      m = min(hat_len, n - h0)
      hat = np.diff(rng.standard_normal(m + 1)) * np.exp(-np.arange(m) / (0.01 * sr))
      drums[h0:h0 + m] += hat[:, None] * [0.3, 0.6]
  stems["drums"] = drums

  # bass: a walking line of low notes, one per beat, with a few harmonics.
  bass = np.zeros(n)
  env = _envelope(beat, sr, 0.005, 0.3)
  for i, start in enumerate(range(0, n, beat)):
    f = 41.2 * 2 ** (rng.integers(0, 12) / 12)
    m = min(beat, n - start)
    tt = np.arange(m) / sr
    note = sum(np.sin(2 * np.pi * f * h * tt) / h for h in (1, 2, 3))
    bass[start:start + m] = note * env[:m]
  stems["bass"] = np.stack([bass, bass], axis=1)

  # other: chord pad, a new triad every 4 beats, slightly detuned between channels.
  other = np.zeros((n, 2))
  bar = 4 * beat
  for start in range(0, n, bar):
    root = 220 * 2 ** (rng.integers(0, 12) / 12)
    m = min(bar, n - start)
    tt = np.arange(m) / sr
    env = np.minimum(tt / 0.05, 1.0) * np.minimum((m / sr - tt) / 0.05, 1.0)
    for ratio in (1.0, 1.26, 1.5):
      other[start:start + m, 0] += np.sin(2 * np.pi * root * ratio * tt) * env
      other[start:start + m, 1] += np.sin(2 * np.pi * root * ratio * 1.003 * tt) * env
  stems["other"] = other

  # vocals: vibrato melody with harmonics, in phrases separated by rests (silent stretches).
  f0 = np.zeros(n)
  gate = np.zeros(n)
  pos = 0
  while pos < n:
    phrase = int(rng.uniform(1.0, 3.0) * sr)
    note_len = beat // 2
    for s in range(pos, min(pos + phrase, n), note_len):
      e = min(s + note_len, n)
      f0[s:e] = 330 * 2 ** (rng.integers(-5, 8) / 12)
      gate[s:e] = 1.0
    pos += phrase + int(rng.uniform(0.3, 1.0) * sr)
  kernel = np.hanning(int(0.02 * sr))
  gate = np.convolve(gate, kernel / kernel.sum(), mode="same")
  f_inst = f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
  phase = 2 * np.pi * np.cumsum(f_inst) / sr
  voice = sum(np.sin(h * phase) / h ** 1.5 for h in range(1, 6)) * gate
  stems["vocals"] = np.stack([voice, 0.9 * voice], axis=1)

  out = {}
  for name in sources.STEMS:
    x = stems[name]
    out[name] = (x * (STEM_PEAK / max(np.abs(x).max(), 1e-9))).astype(np.float32)
  return out


def mixture_of(stems: Mapping[str, np.ndarray]) -> np.ndarray:
  return sum(stems[s] for s in sources.STEMS).astype(np.float32)


def write_stem_mp4(path: str, streams: Sequence[np.ndarray], sample_rate: int = sources.SAMPLE_RATE,
                   bitrate: str = "256k") -> None:
  """Writes float (samples, channels) arrays as the AAC audio streams of one mp4, in order.

  The streams may have different lengths, channel counts or (via several calls) rates: tests use
  that to make broken files.
  """
  ffmpeg = shutil.which("ffmpeg")
  if ffmpeg is None:
    raise RuntimeError("ffmpeg is needed to write .stem.mp4 files.")
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')}")

  with tempfile.TemporaryDirectory() as tmp:
    def encode(i):  # one ffmpeg per stream, so that the streams are encoded in parallel.
      wav, m4a = os.path.join(tmp, f"{i}.wav"), os.path.join(tmp, f"{i}.m4a")
      sf.write(wav, np.asarray(streams[i], np.float32), sample_rate, subtype="FLOAT")
      run([ffmpeg, "-nostdin", "-y", "-v", "error", "-i", wav, "-c:a", "aac", "-aac_coder", "fast",
           "-b:a", bitrate, m4a])
      return m4a

    with concurrent.futures.ThreadPoolExecutor(min(len(streams), os.cpu_count() or 1)) as pool:
      parts = list(pool.map(encode, range(len(streams))))
    cmd = [ffmpeg, "-nostdin", "-y", "-v", "error"]
    for part in parts:
      cmd += ["-i", part]
    for i in range(len(parts)):
      cmd += ["-map", f"{i}:a"]
    tmp_out = os.path.join(tmp, "out.mp4")
    run(cmd + ["-c", "copy", "-f", "mp4", tmp_out])
    shutil.move(tmp_out, path)


def write_wav_folder(folder: str, stems: Mapping[str, np.ndarray],
                     sample_rate: int = sources.SAMPLE_RATE) -> None:
  """Writes {name: float or int16 (samples, channels)} as 16-bit ``<folder>/<name>.wav``."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  for name, x in stems.items():
    sf.write(os.path.join(folder, name + ".wav"), np.asarray(x), sample_rate, subtype="PCM_16")


def write_track(root: str, subset: str, name: str, stems: Mapping[str, np.ndarray], variant: str
                ) -> str:
  """One track {drums, bass, other, vocals} (+ mixture = their sum) in MUSDB layout; its path."""
  stems = dict(stems)
  stems.setdefault("mixture", mixture_of(stems))
  folder = os.path.join(root, subset)
  os.makedirs(folder, exist_ok=True)
  if variant == "stem":
    path = os.path.join(folder, name + ".stem.mp4")
    write_stem_mp4(path, [stems[s] for s in stems_io.STEM_NAMES])
  elif variant == "hq":
    path = os.path.join(folder, name)
    write_wav_folder(path, {s: stems[s] for s in stems_io.STEM_NAMES})
  else:
    raise ValueError(f"Unknown MUSDB18 variant {variant!r}; use 'stem' or 'hq'.")
  return path


def default_track_names(subset: str, count: int) -> List[str]:
  """Real MUSDB18 names: train alternates non-validation and validation tracks; test avoids the
  stempeg excerpt's name (so that it can be added next to them)."""
  if subset == "train":
    validation = list(tracklists.validation_tracks())
    plain = [n for n in tracklists.TRAIN_TRACKS if n not in set(validation)]
    names = [n for pair in zip(plain, validation) for n in pair] + plain[len(validation):]
  elif subset == "test":
    names = [n for n in tracklists.TEST_TRACKS if n != EXAMPLE_TRACK]
  else:
    raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
  if count > len(names):
    raise ValueError(f"At most {len(names)} synthetic {subset} tracks.")
  return names[:count]


def write_musdb18(root: str, variant: str = "stem",
                  tracks: Optional[Mapping[str, Union[int, Iterable[str]]]] = None,
                  seconds: Union[float, Sequence[float]] = 12.0, seed: int = 0,
                  with_example: bool = False) -> Dict[str, List[str]]:
  """Writes a MUSDB18-shaped manual directory of synthetic tracks; returns {subset: [names]}.

  Args:
    root: the manual directory (gets ``train/`` and ``test/``).
    variant: "stem" (``.stem.mp4``, 5 AAC streams) or "hq" (wav folders).
    tracks: {"train": count or names, "test": count or names}; default 4 train (2 of them in
      musdb's validation list) and 2 test tracks.
    seconds: track length, or (min, max) for lengths drawn per track.
    seed: all signals and lengths are a function of it and the track name.
    with_example: also add stempeg's real MUSDB18 excerpt (a test track) in the same format.
  """
  tracks = {"train": 4, "test": 2} if tracks is None else tracks
  written = {}
  for subset, spec in tracks.items():
    names = default_track_names(subset, spec) if isinstance(spec, int) else list(spec)
    written[subset] = []
    for name in names:
      if isinstance(seconds, (int, float)):
        secs = float(seconds)
      else:
        lo, hi = seconds
        secs = float(_rng(seed, "length", name).uniform(lo, hi))
      stems = synthesize_track(secs, seed=zlib.crc32(f"{seed}/{name}".encode()))
      write_track(root, subset, name, stems, variant)
      written[subset].append(name)
  if with_example:
    add_stempeg_example(root, variant)
    written.setdefault("test", []).append(EXAMPLE_TRACK)
  return written


def add_stempeg_example(root: str, variant: str) -> str:
  """Adds stempeg's real 6 s MUSDB18 excerpt to ``<root>/test`` (copied, or decoded to 16-bit wavs)."""
  import stempeg  # pylint: disable=g-import-not-at-top
  source = stempeg.example_stem_path()
  folder = os.path.join(root, "test")
  os.makedirs(folder, exist_ok=True)
  if variant == "stem":
    path = os.path.join(folder, EXAMPLE_TRACK + ".stem.mp4")
    shutil.copyfile(source, path)
  elif variant == "hq":
    path = os.path.join(folder, EXAMPLE_TRACK)
    write_wav_folder(path, stems_io.read_stem_file(source))
  else:
    raise ValueError(f"Unknown MUSDB18 variant {variant!r}; use 'stem' or 'hq'.")
  return path
