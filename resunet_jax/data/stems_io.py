"""Reading one MUSDB18 track from either release format into int16 arrays.

* Compressed release: ``<track>.stem.mp4`` with five AAC streams in the order mixture, drums, bass,
  other, vocals (musdb's ``stem_ids``). Decoded with the ``ffmpeg`` binary, one process per stream,
  straight to signed 16-bit PCM; ffmpeg converts its float decoder output with
  ``clip(round(x * 32768))``, so ``int16 / 32768`` equals stempeg's float decode to within half an
  LSB (exactly, except where the AAC decoder overshoots full scale and the value is clipped).
* MUSDB18-HQ: ``<track>/{mixture,drums,bass,other,vocals}.wav``, 16-bit PCM, read losslessly with
  soundfile.

Every problem with a file raises :class:`StemFileError` whose message names the file and the problem.

Length fix-up: AAC streams of one ``.stem.mp4`` are encoded independently and can decode to lengths
that differ by a few hundred samples (encoder padding of the last frame). When the streams of a track
differ by at most :data:`MAX_LENGTH_MISMATCH` samples, all are cropped at the end to the shortest one
(the start is never moved, so the streams stay aligned); a larger difference is an error.
"""
import concurrent.futures
import json
import logging
import os
import shutil
import subprocess
from typing import Dict, List, Optional

import numpy as np

from resunet_jax import sources

# Stream order in a .stem.mp4 (and the files of an HQ folder): the mixture, then the stems.
STEM_NAMES = ("mixture",) + sources.STEMS
NUM_CHANNELS = 2
# Two AAC frames. Larger differences mean the streams do not belong together.
MAX_LENGTH_MISMATCH = 2048

_log = logging.getLogger(__name__)


class StemFileError(ValueError):
  """A MUSDB18 track file that cannot be used; the message names the file and the problem."""


def _ffmpeg(name: str) -> str:
  path = shutil.which(name)
  if path is None:
    raise RuntimeError(f"The '{name}' binary is needed to read/write .stem.mp4 files; install ffmpeg.")
  return path


def probe_stem_file(path: str) -> List[dict]:
  """The audio streams of a media file (ffprobe), each a dict with sample_rate, channels, codec."""
  cmd = [_ffmpeg("ffprobe"), "-v", "error", "-show_entries",
         "stream=index,codec_type,codec_name,sample_rate,channels", "-of", "json", path]
  proc = subprocess.run(cmd, capture_output=True, check=False)
  if proc.returncode != 0:
    msg = proc.stderr.decode(errors="replace").strip() or f"ffprobe exit status {proc.returncode}"
    raise StemFileError(f"{path}: not a readable stems file (corrupt or truncated?): {msg}")
  try:
    streams = json.loads(proc.stdout.decode())["streams"]
  except (ValueError, KeyError) as e:
    raise StemFileError(f"{path}: ffprobe output could not be parsed ({e}).") from e
  return [dict(sample_rate=int(s.get("sample_rate", 0)), channels=int(s.get("channels", 0)),
               codec=s.get("codec_name", "?"))
          for s in streams if s.get("codec_type") == "audio"]


def _decode_stream(path: str, audio_stream: int) -> np.ndarray:
  """One audio stream → int16 (samples, 2). ``-xerror`` makes ffmpeg stop at the first error."""
  cmd = [_ffmpeg("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", path,
         "-map", f"0:a:{audio_stream}", "-f", "s16le", "-acodec", "pcm_s16le", "-"]
  proc = subprocess.run(cmd, capture_output=True, check=False)
  err = proc.stderr.decode(errors="replace").strip()
  if proc.returncode != 0 or err:
    raise StemFileError(
        f"{path}: decoding stream {audio_stream} ({STEM_NAMES[audio_stream]}) failed "
        f"(corrupt or truncated file?): {err or f'ffmpeg exit status {proc.returncode}'}")
  if len(proc.stdout) % (2 * NUM_CHANNELS):
    raise StemFileError(f"{path}: stream {audio_stream} decoded to a partial sample frame.")
  return np.frombuffer(proc.stdout, dtype=np.int16).reshape(-1, NUM_CHANNELS)


def reconcile_lengths(stems: Dict[str, np.ndarray], path: str,
                      max_mismatch: int = MAX_LENGTH_MISMATCH) -> Dict[str, np.ndarray]:
  """Crops all stems at the end to the shortest, if they differ by ≤ max_mismatch samples."""
  lengths = {k: v.shape[0] for k, v in stems.items()}
  shortest, longest = min(lengths.values()), max(lengths.values())
  if longest - shortest > max_mismatch:
    raise StemFileError(
        f"{path}: streams have different lengths {lengths} (differ by {longest - shortest} samples, "
        f"more than the {max_mismatch} that are cropped automatically).")
  if longest != shortest:
    _log.warning("%s: stream lengths %s differ by %d samples; cropping all to %d.",
                 path, lengths, longest - shortest, shortest)
  return {k: v[:shortest] for k, v in stems.items()}


def read_stem_file(path: str, *, max_mismatch: int = MAX_LENGTH_MISMATCH,
                   parallel: bool = True) -> Dict[str, np.ndarray]:
  """A ``.stem.mp4`` → {mixture, drums, bass, other, vocals: int16 (samples, 2)}."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise StemFileError(f"{path}: file not found.")
  streams = probe_stem_file(path)
  if len(streams) < len(STEM_NAMES):
    raise StemFileError(
        f"{path}: has {len(streams)} audio stream(s), a MUSDB18 stems file needs 5 "
        f"({', '.join(STEM_NAMES)}); stream(s) missing.")
  if len(streams) > len(STEM_NAMES):
    raise StemFileError(f"{path}: has {len(streams)} audio streams, expected exactly 5 "
                        f"({', '.join(STEM_NAMES)}).")
  for i, s in enumerate(streams):
    if s["sample_rate"] != sources.SAMPLE_RATE:
      raise StemFileError(f"{path}: stream {i} ({STEM_NAMES[i]}) has sample rate "
                          f"{s['sample_rate']} Hz, expected {sources.SAMPLE_RATE} Hz.")
    if s["channels"] != NUM_CHANNELS:
      raise StemFileError(f"{path}: stream {i} ({STEM_NAMES[i]}) has {s['channels']} channel(s), "
                          f"expected {NUM_CHANNELS} (stereo).")
  if parallel:  # ffmpeg runs in subprocesses: threads overlap them.
    with concurrent.futures.ThreadPoolExecutor(len(STEM_NAMES)) as pool:
      arrays = list(pool.map(lambda i: _decode_stream(path, i), range(len(STEM_NAMES))))
  else:
    arrays = [_decode_stream(path, i) for i in range(len(STEM_NAMES))]
  return reconcile_lengths(dict(zip(STEM_NAMES, arrays)), path, max_mismatch)


def read_wav_folder(path: str, *, max_mismatch: int = MAX_LENGTH_MISMATCH) -> Dict[str, np.ndarray]:
  """A MUSDB18-HQ track folder → {mixture, drums, bass, other, vocals: int16 (samples, 2)}."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise StemFileError(f"{path}: track folder not found.")
  missing = [n for n in STEM_NAMES if not os.path.isfile(os.path.join(path, n + ".wav"))]
  if missing:
    raise StemFileError(f"{path}: missing {', '.join(m + '.wav' for m in missing)}.")
  stems = {}
  for name in STEM_NAMES:
    file = os.path.join(path, name + ".wav")
    try:
      info = sf.info(file)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError.
      raise StemFileError(f"{file}: not a readable audio file (corrupt or truncated?): {e}") from e
    if info.samplerate != sources.SAMPLE_RATE:
      raise StemFileError(f"{file}: sample rate {info.samplerate} Hz, expected {sources.SAMPLE_RATE} Hz.")
    if info.channels != NUM_CHANNELS:
      raise StemFileError(f"{file}: {info.channels} channel(s), expected {NUM_CHANNELS} (stereo).")
    try:
      data = sf.read(file, dtype="int16", always_2d=True)[0]
    except Exception as e:
      raise StemFileError(f"{file}: reading failed (corrupt or truncated?): {e}") from e
    if data.shape[0] != info.frames:
      raise StemFileError(f"{file}: header says {info.frames} frames but {data.shape[0]} could be "
                          "read (truncated file?).")
    stems[name] = data
  return reconcile_lengths(stems, path, max_mismatch)


def read_track(path: str, variant: str, **kwargs) -> Dict[str, np.ndarray]:
  """Dispatches on the release format: "stem" (.stem.mp4) or "hq" (wav folder)."""
  if variant == "stem":
    return read_stem_file(path, **kwargs)
  if variant == "hq":
    return read_wav_folder(path, **kwargs)
  raise ValueError(f"Unknown MUSDB18 variant {variant!r}; use 'stem' or 'hq'.")


def int16_to_float(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
  """PCM convention shared by soundfile and ffmpeg: float = int16 / 32768."""
  return np.multiply(x, np.float32(1.0 / 32768.0), out=out, dtype=np.float32)
