"""Audio files in and out for separation: any readable format, streamed in blocks, written atomically.

Reading. ``open_audio(path)`` probes a file and returns an :class:`AudioSource` whose ``blocks()``
yields float32 (frames, channels) arrays at the file's own rate. Files libsndfile reads (wav, flac,
ogg, aiff, mp3, ...) are read with soundfile; anything else (m4a/mp4/aac, ``.stem.mp4`` -- the
first audio stream, i.e. the mixture --, opus, video containers) is decoded by an ``ffmpeg``
subprocess into a pipe. Either way no more than one block is held at a time.

Resampling. :class:`StreamingResampler` is ``scipy.signal.resample_poly`` (Kaiser-windowed sinc,
beta 5, 10 zero crossings per side of the slower rate) computed block by block: the filter state
is the tail of the input kept between blocks, so the concatenated output equals ``resample_poly``
of the whole signal (to float rounding) and memory does not grow with the signal.

Writing. :class:`AtomicAudioWriter` writes blocks into a hidden temporary file next to the target
and renames it into place on ``commit()``; an existing target is never replaced unless
``overwrite=True``, and ``discard()`` (or an exception inside ``with``) leaves nothing behind.

Every problem with an input raises :class:`AudioError` whose message starts with the file's path.
"""
import dataclasses
import fractions
import json
import os
import shutil
import subprocess
import tempfile
from typing import Iterable, Iterator, Optional

import numpy as np

from resunet_jax import fileutil

DEFAULT_BLOCK_FRAMES = 1 << 16
# Extensions a folder scan picks up (anything else must be named explicitly).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac",
                    ".aif", ".aiff", ".wma", ".webm", ".mka")
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class AudioError(ValueError):
  """An input that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  path: str
  sample_rate: int
  channels: int
  # Exact for soundfile; estimated from the container's duration for ffmpeg (None if unknown).
  frames: Optional[int]
  backend: str  # "soundfile" | "ffmpeg"


def _ffmpeg_binary(name):
  path = shutil.which(name)
  if path is None:
    raise RuntimeError(f"the '{name}' binary is needed to read this file; install ffmpeg")
  return path


def _probe_soundfile(path):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  try:
    info = sf.info(path)
  except Exception as e:  # LibsndfileError, RuntimeError, TypeError depending on the version.
    return None, str(e).strip()
  return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames),
                   "soundfile"), None


def _probe_ffmpeg(path):
  cmd = [_ffmpeg_binary("ffprobe"), "-v", "error", "-select_streams", "a", "-show_entries",
         "stream=sample_rate,channels,duration:format=duration", "-of", "json", path]
  proc = subprocess.run(cmd, capture_output=True, check=False)
  if proc.returncode != 0:
    return None, proc.stderr.decode(errors="replace").strip() or f"ffprobe exit {proc.returncode}"
  try:
    meta = json.loads(proc.stdout.decode())
  except ValueError as e:
    return None, f"unparsable ffprobe output ({e})"
  streams = meta.get("streams") or []
  if not streams:
    return None, "no audio stream"
  stream = streams[0]
  rate, channels = int(stream.get("sample_rate") or 0), int(stream.get("channels") or 0)
  if rate <= 0 or channels <= 0:
    return None, f"audio stream without sample rate/channels ({stream})"
  duration = stream.get("duration") or (meta.get("format") or {}).get("duration")
  try:
    frames = int(round(float(duration) * rate))
  except (TypeError, ValueError):
    frames = None
  return AudioInfo(path, rate, channels, frames, "ffmpeg"), None


def probe(path) -> AudioInfo:
  """Sample rate, channels and length of an audio file; AudioError if it cannot be read."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(f"{path}: file not found")
  if os.path.isdir(path):
    raise AudioError(f"{path}: is a directory, not an audio file")
  info, sf_error = _probe_soundfile(path)
  if info is None:
    info, ff_error = _probe_ffmpeg(path)
    if info is None:
      raise AudioError(f"{path}: not a readable audio file (soundfile: {sf_error}; "
                       f"ffmpeg: {ff_error})")
  if info.frames == 0:
    raise AudioError(f"{path}: contains no audio samples (empty)")
  return info


class AudioSource:
  """A probed audio file; ``blocks()`` streams it as float32 (frames, channels) blocks."""

  def __init__(self, path):
    self.info = probe(path)

  @property
  def path(self):
    return self.info.path

  def blocks(self, block_frames=DEFAULT_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    if self.info.backend == "soundfile":
      return self._soundfile_blocks(block_frames)
    return self._ffmpeg_blocks(block_frames)

  def _soundfile_blocks(self, block_frames):
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    try:
      with sf.SoundFile(self.path) as f:
        while True:
          block = f.read(block_frames, dtype="float32", always_2d=True)
          if not len(block):
            return
          yield block
    except sf.LibsndfileError as e:
      raise AudioError(f"{self.path}: reading failed (corrupt or truncated?): {e}") from e

  def _ffmpeg_blocks(self, block_frames):
    channels = self.info.channels
    cmd = [_ffmpeg_binary("ffmpeg"), "-nostdin", "-v", "error", "-i", self.path, "-map", "0:a:0",
           "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    frame_bytes = 4 * channels
    with tempfile.TemporaryFile() as err:
      # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
      try:
        pending = b""
        while True:
          data = proc.stdout.read(block_frames * frame_bytes)
          if not data:
            break
          data = pending + data
          usable = len(data) - len(data) % frame_bytes
          pending = data[usable:]
          if usable:
            yield np.frombuffer(data[:usable], np.float32).reshape(-1, channels)
        code = proc.wait()
        err.seek(0)
        message = err.read().decode(errors="replace").strip()
        if code != 0:
          raise AudioError(f"{self.path}: decoding failed (corrupt or truncated?): "
                           f"{message or f'ffmpeg exit status {code}'}")
      finally:
        if proc.poll() is None:  # the consumer stopped early
          proc.kill()
          proc.wait()
        proc.stdout.close()


def open_audio(path) -> AudioSource:
  return AudioSource(path)


def read_audio(path):
  """A whole file: (float32 (frames, channels), sample_rate)."""
  source = AudioSource(path)
  blocks = list(source.blocks())
  if not blocks:
    raise AudioError(f"{path}: contains no audio samples (empty)")
  return np.concatenate(blocks), source.info.sample_rate


# ------------------------------------------------------------------------------------------------
# Resampling.


def _ratio(from_rate, to_rate):
  r = fractions.Fraction(int(to_rate), int(from_rate))
  return r.numerator, r.denominator  # up, down (coprime)


def resample_filter(up, down):
  """The FIR low-pass ``resample_poly`` designs for (up, down), times ``up``: (2*half_len+1,)."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  max_rate = max(up, down)
  half_len = 10 * max_rate
  return signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up, half_len


def resample(x, from_rate, to_rate):
  """Whole-signal resampling along axis 0 (``scipy.signal.resample_poly``), float32 out."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  if int(from_rate) == int(to_rate):
    return np.asarray(x, np.float32)
  up, down = _ratio(from_rate, to_rate)
  return signal.resample_poly(np.asarray(x, np.float64), up, down, axis=0).astype(np.float32)


def resampled_length(frames, from_rate, to_rate):
  up, down = _ratio(from_rate, to_rate)
  return -(-frames * up // down)


class StreamingResampler:
  """``resample_poly`` along axis 0, fed block by block; ``flush()`` ends the stream.

  Output m = sum_k h[k] xu[m*down + half_len - k] (xu: the input upsampled by zero insertion).
  Outputs are produced a whole period at a time (``up`` outputs per ``down`` inputs): for outputs
  [q*up, (q+Q)*up) ``upfirdn`` runs on inputs from ``q*down - lead``, where ``lead`` is chosen
  so that every period starts at the same filter phase and covers the filter's history.
  """

  def __init__(self, from_rate, to_rate, channels):
    self.up, self.down = _ratio(from_rate, to_rate)
    self.channels = channels
    self.identity = self.up == self.down
    if self.identity:
      return
    self.h, half = resample_filter(self.up, self.down)
    self.taps = len(self.h)
    # lead: inputs before q*down needed by output q*up, with (lead*up + half) % down == 0.
    lead = -(-half // self.up)
    while (lead * self.up + half) % self.down:
      lead += 1
    self.lead = lead
    self.skip = (lead * self.up + half) // self.down  # upfirdn outputs before output q*up
    # Inputs after (q+Q)*down that outputs < (q+Q)*up still need.
    self.tail = max(0, (half - self.down) // self.up + 1)
    self.buffer = np.zeros((lead, channels), np.float64)  # starts at input index q*down - lead
    self.inputs = 0  # input frames received
    self.outputs = 0  # output frames produced (a multiple of up until flush)

  def _run(self, periods):
    from scipy import signal  # pylint: disable=g-import-not-at-top
    need = self.lead + periods * self.down + self.tail
    chunk = self.buffer[:need]
    y = signal.upfirdn(self.h, chunk, self.up, self.down, axis=0)
    y = y[self.skip:self.skip + periods * self.up]
    assert y.shape[0] == periods * self.up, (y.shape, periods, self.up)
    self.buffer = self.buffer[periods * self.down:]
    self.outputs += y.shape[0]
    return y.astype(np.float32)

  def process(self, block):
    block = np.asarray(block)
    if self.identity:
      return np.asarray(block, np.float32)
    self.inputs += block.shape[0]
    self.buffer = np.concatenate([self.buffer, block.astype(np.float64)])
    periods = (self.buffer.shape[0] - self.lead - self.tail) // self.down
    if periods <= 0:
      return np.zeros((0, self.channels), np.float32)
    return self._run(periods)

  def flush(self):
    """The remaining outputs; the stream's total is ceil(inputs * up / down)."""
    if self.identity:
      return np.zeros((0, self.channels), np.float32)
    total = -(-self.inputs * self.up // self.down)
    remaining = total - self.outputs
    if remaining <= 0:
      return np.zeros((0, self.channels), np.float32)
    periods = -(-remaining // self.up)
    need = self.lead + periods * self.down + self.tail
    pad = need - self.buffer.shape[0]
    if pad > 0:  # the signal is zero after its end (resample_poly's padding)
      self.buffer = np.concatenate([self.buffer, np.zeros((pad, self.channels))])
    return self._run(periods)[:remaining]


def resample_stream(blocks: Iterable[np.ndarray], from_rate, to_rate, channels
                    ) -> Iterator[np.ndarray]:
  """Blocks of a stream resampled on the fly (nothing is yielded for empty output blocks)."""
  resampler = StreamingResampler(from_rate, to_rate, channels)
  for block in blocks:
    out = resampler.process(block)
    if len(out):
      yield out
  out = resampler.flush()
  if len(out):
    yield out


# ------------------------------------------------------------------------------------------------
# Writing.


def output_format(path):
  ext = os.path.splitext(path)[1].lower()
  if ext not in OUTPUT_FORMATS:
    raise ValueError(f"{path}: output format {ext!r} is not supported; use one of "
                     f"{sorted(OUTPUT_FORMATS)}")
  return OUTPUT_FORMATS[ext]


class AtomicAudioWriter:
  """Writes an audio file through a temporary sibling that ``commit()`` renames into place.

  ``subtype`` is a soundfile subtype ("PCM_16", "PCM_24", "FLOAT" (wav only)); integer subtypes
  clip to [-1, 1] (libsndfile would otherwise wrap around).
  """

  def __init__(self, path, sample_rate, channels, subtype="PCM_16", overwrite=False):
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    self.path = os.path.abspath(os.fspath(path))
    self.format = output_format(self.path)
    if subtype == "FLOAT" and self.format == "FLAC":
      raise ValueError(f"{self.path}: FLAC cannot store float samples; use PCM_16 or PCM_24")
    self.overwrite = overwrite
    if os.path.exists(self.path) and not overwrite:
      raise FileExistsError(f"{self.path} exists; not overwriting it (use --force)")
    self.clip = subtype.startswith("PCM")
    self.frames = 0
    self.tmp = fileutil.temp_file(self.path, tag="partial")
    try:
      self._file = sf.SoundFile(self.tmp, "w", samplerate=int(sample_rate), channels=channels,
                                subtype=subtype, format=self.format)
    except Exception:
      os.unlink(self.tmp)
      raise

  def write(self, block):
    block = np.asarray(block, np.float32)
    if self.clip:
      block = np.clip(block, -1.0, 1.0)
    self._file.write(block)
    self.frames += block.shape[0]

  def commit(self):
    self._file.close()
    if self.overwrite:
      os.replace(self.tmp, self.path)
      return self.path
    try:  # link + unlink: fails instead of replacing a file that appeared meanwhile
      os.link(self.tmp, self.path)
    except FileExistsError:
      self.discard()
      raise FileExistsError(f"{self.path} exists; not overwriting it (use --force)") from None
    except OSError:  # file systems without hard links
      if os.path.exists(self.path):
        self.discard()
        raise FileExistsError(f"{self.path} exists; not overwriting it (use --force)") from None
      os.rename(self.tmp, self.path)
      return self.path
    os.unlink(self.tmp)
    return self.path

  def discard(self):
    if not self._file.closed:
      self._file.close()
    if os.path.exists(self.tmp):
      os.unlink(self.tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      self.discard()
    return False
