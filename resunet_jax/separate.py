"""Separating songs of any length at constant memory: fixed-shape chunks through one compiled function.

    from resunet_jax import checkpoint, separate
    model, variables, desc = checkpoint.load_model("models/vocals")
    separator = separate.SongSeparator.from_model(model, variables, desc["sources"])
    estimates = separator.separate(mixture, sample_rate=44100)   # {"vocals": (L, C)}

    python -m resunet_jax.separate song.mp3 folder/ --checkpoint models/vocals --out separated/

A song is cut into chunks of ``chunk`` samples (44.1 kHz) that start every ``hop`` samples; chunks
go through the model ``batch_size`` at a time, always with the same shape (the last ones
zero-padded), so the model is compiled once. The outputs are overlap-added with per-chunk windows
that sum to one at every sample. Two schemes (:func:`make_plan`):

* ``"crossfade"`` (default): chunks overlap by ``overlap`` samples; inside an overlap the earlier
  chunk fades out and the later one fades in with complementary raised-cosine (sin^2 / cos^2)
  ramps, so there is no seam. The first chunk does not fade in and the last does not fade out, so
  the song's first and last samples keep full gain. Chunks: 1 if L <= chunk, else
  ceil((L - chunk) / hop) + 1, the last one zero-padded past the end. With overlap = chunk / 2 the
  windows are periodic Hann windows.
* ``"authors"``: bytesep's ``Separator`` (REFERENCE §7.2) exactly: the song is zero-padded to a
  multiple P of the chunk (30 s), chunks with a 50 % hop (P / hop - 1 of them), kept without
  cross-fade: [0, 3/4) of the first chunk, [1/4, 3/4) of the middle ones, [1/4, 1) of the last; a
  single chunk is used whole; the result is cut to the song's length. Here that is the same
  overlap-add with 0/1 windows, which reproduces the slicing bit for bit.

Streaming: input blocks are consumed as they come and output blocks are yielded as soon as no later
chunk can change them, so memory is bounded by the chunk batch, not the song. Files are decoded in
blocks (:mod:`resunet_jax.audio`), resampled to 44.1 kHz on the fly when needed and back to their
own rate on output, and written into temporary files renamed into place at the end.

Channels: the released models are stereo; a mono input is duplicated into both channels and the
outputs are averaged back to mono. The optional residual (``residual=True``) is mixture minus the
sum of the estimates at 44.1 kHz; it is named after what it estimates when that is clear
("accompaniment" for a vocals model, "vocals" for an accompaniment model), else "residual".
"""
import argparse
import dataclasses
import functools
import os
import sys
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from resunet_jax import audio
from resunet_jax import backends
from resunet_jax import runtime

SCHEMES = ("crossfade", "authors")
DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 10.0
# Stems of the MUSDB18 sources, to name a residual.
_STEMS = {"drums": {"drums"}, "bass": {"bass"}, "other": {"other"}, "vocals": {"vocals"},
          "accompaniment": {"drums", "bass", "other"}}


# ------------------------------------------------------------------------------------------------
# Chunk plans: where chunks start and how their outputs are weighted.


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
  scheme: str
  chunk: int  # samples per chunk (44.1 kHz)
  hop: int  # samples between chunk starts

  @property
  def overlap(self):
    return self.chunk - self.hop

  def num_chunks(self, length):
    """Chunks for a song of ``length`` samples (>= 1)."""
    if self.scheme == "authors":
      return 2 * (-(-length // self.chunk)) - 1
    if length <= self.chunk:
      return 1
    return -(-(length - self.chunk) // self.hop) + 1

  @functools.lru_cache(maxsize=8)
  def window(self, first, last):
    """The (chunk,) float32 weights of a chunk that is (or not) the first / the last."""
    n, w = self.chunk, np.zeros(self.chunk, np.float64)
    if self.scheme == "authors":
      quarter = n // 4
      start = 0 if first else quarter
      stop = n if last else 3 * quarter
      w[start:stop] = 1.0
      return w.astype(np.float32)
    w[:] = 1.0
    f = self.overlap
    if f:
      rise = np.sin(0.5 * np.pi * (np.arange(f) + 0.5) / f) ** 2
      if not first:
        w[:f] = rise
      if not last:
        w[n - f:] = 1.0 - rise  # the next chunk's rise over the same samples
    return w.astype(np.float32)


def make_plan(scheme="crossfade", chunk_seconds=DEFAULT_CHUNK_SECONDS,
              overlap_seconds=DEFAULT_OVERLAP_SECONDS, sample_rate=audio.SAMPLE_RATE,
              multiple=4):
  """A :class:`ChunkPlan`; the chunk is rounded to a multiple of ``multiple`` samples (the
  subband models return L - L mod 4 samples). ``overlap_seconds`` is ignored by "authors"."""
  if scheme not in SCHEMES:
    raise ValueError(f"unknown overlap scheme {scheme!r}; expected one of {SCHEMES}")
  chunk = int(round(chunk_seconds * sample_rate))
  if scheme == "authors":
    chunk -= chunk % 4  # quarters must be whole samples (330 750 for 30 s)
    if chunk % multiple:
      raise ValueError(f"chunk of {chunk} samples is not a multiple of {multiple}")
    return ChunkPlan("authors", chunk, chunk // 2)
  chunk -= chunk % multiple
  overlap = int(round(overlap_seconds * sample_rate))
  if chunk <= 0:
    raise ValueError(f"chunk_seconds={chunk_seconds} gives an empty chunk")
  if not 0 <= overlap <= chunk // 2:
    raise ValueError(f"overlap_seconds={overlap_seconds} must be between 0 and half the chunk "
                     f"({chunk_seconds / 2} s)")
  return ChunkPlan("crossfade", chunk, chunk - overlap)


def min_samples(model):
  """The shortest input (44.1 kHz samples) the model's STFT accepts (> n_fft / 2 per signal)."""
  from resunet_jax import pqmf  # pylint: disable=g-import-not-at-top
  length = 1
  while True:
    signal = pqmf.analysis_length(length, model.subbands) if model.subbands else length
    if signal > model.n_fft // 2:
      return length
    length += 1


def residual_name(sources):
  """What mixture minus the sum of ``sources`` estimates, as a MUSDB18 source name if it is one."""
  parts = [_STEMS.get(s) for s in sources]
  if any(p is None for p in parts) or sum(map(len, parts)) != len(set().union(*parts)):
    return "residual"  # unknown names, or stems counted twice
  rest = _STEMS["vocals"] | _STEMS["accompaniment"]
  rest = rest.difference(*parts)
  for name, stems in _STEMS.items():
    if stems == rest:
      return name
  return "residual"


def _to_channels(x, channels):
  """(..., n, C) -> (..., n, channels): duplicate mono, average to mono."""
  c = x.shape[-1]
  if c == channels:
    return x
  if c == 1:
    return np.repeat(x, channels, axis=-1)
  if channels == 1:
    return x.mean(axis=-1, keepdims=True)
  raise ValueError(f"cannot map {c} audio channels to {channels}")


# ------------------------------------------------------------------------------------------------
# The separator.


class SongSeparator:
  """Separates whole songs or streams with a fixed-shape chunk function.

  ``chunk_fn``: float32 (batch_size, chunk, channels) -> (batch_size, S, chunk, channels), e.g.
  the compiled model (:meth:`from_model`) or any stand-in with that contract.
  """

  def __init__(self, chunk_fn: Callable[[np.ndarray], np.ndarray], sources: Sequence[str],
               plan: ChunkPlan, *, batch_size=1, channels=2, min_length=1):
    self.chunk_fn = chunk_fn
    self.sources = list(sources)
    self.plan = plan
    self.batch_size = int(batch_size)
    self.channels = int(channels)
    self.min_length = int(min_length)
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")

  @classmethod
  def from_model(cls, model, variables, sources, *, scheme="crossfade",
                 chunk_seconds=DEFAULT_CHUNK_SECONDS, overlap_seconds=DEFAULT_OVERLAP_SECONDS,
                 batch_size=1):
    """Compiles ``model.apply`` once for (batch_size, chunk, channels) float32 inputs."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    if model.num_sources != len(sources):
      raise ValueError(f"the model separates {model.num_sources} source(s) but {len(sources)} "
                       f"name(s) were given: {list(sources)}")
    plan = make_plan(scheme, chunk_seconds, overlap_seconds,
                     multiple=4 if model.subbands else 1)
    variables = jax.device_put(variables)
    shape = jax.ShapeDtypeStruct((batch_size, plan.chunk, model.audio_channels), jnp.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    compiled = apply.lower(variables, shape).compile()

    def chunk_fn(x):
      return np.asarray(compiled(variables, x))

    return cls(chunk_fn, sources, plan, batch_size=batch_size, channels=model.audio_channels,
               min_length=min_samples(model))

  def output_names(self, residual=False):
    return self.sources + ([residual_name(self.sources)] if residual else [])

  # -- streaming core ------------------------------------------------------------------------

  def stream(self, blocks: Iterable[np.ndarray], *, residual=False, name="input",
             progress: Optional[Callable[[int], None]] = None) -> Iterator[np.ndarray]:
    """Separates a 44.1 kHz stream of (n, C) blocks; yields (n, S', C) output blocks in order.

    S' = len(output_names(residual)); C (1 or 2) is taken from the first block. The outputs
    together have as many samples as the input. ``progress(n)`` is called with each output
    block's length. Raises audio.AudioError (naming ``name``) for an empty or too-short input,
    before anything is yielded.
    """
    plan, batch_size = self.plan, self.batch_size
    n, hop = plan.chunk, plan.hop
    it = iter(blocks)
    in_channels = None
    buffered = []  # input blocks (model channels) from absolute position `buffer_start`
    buffer_start, received, eof = 0, 0, False
    total = num_chunks = None
    acc = None  # (chunk, S, C_model): sums for positions [k*hop, k*hop + chunk) of the next chunk
    batch = []  # [(k, chunk input)]
    k = 0

    def pull():
      nonlocal received, eof, in_channels, total, num_chunks
      try:
        block = next(it)
      except StopIteration:
        eof, total = True, received
        if total == 0:
          raise audio.AudioError(f"{name}: contains no audio samples (empty)") from None
        if total < self.min_length:
          raise audio.AudioError(
              f"{name}: too short: {total} samples at 44.1 kHz ({total / 44100:.3f} s); the "
              f"model needs at least {self.min_length}") from None
        num_chunks = plan.num_chunks(total)
        return
      block = np.asarray(block, np.float32)
      if block.ndim != 2:
        raise ValueError(f"{name}: blocks must be (samples, channels), got {block.shape}")
      if in_channels is None:
        in_channels = block.shape[1]
        if in_channels not in (1, 2):
          raise audio.AudioError(f"{name}: has {in_channels} channels; only mono or stereo "
                                 "audio can be separated")
      if len(block):
        buffered.append(_to_channels(block, self.channels))
        received += len(block)

    def cut(start):
      """Input [start, start + n), zero past the end; drops what no later chunk needs."""
      nonlocal buffered, buffer_start
      if not buffered:  # a chunk entirely past the end (the authors' padding)
        buffered = [np.zeros((0, self.channels), np.float32)]
      data = np.concatenate(buffered) if len(buffered) > 1 else buffered[0]
      offset = start - buffer_start
      x = data[offset:offset + n]
      if len(x) < n:
        x = np.concatenate([x, np.zeros((n - len(x), self.channels), np.float32)])
      keep = start + hop - buffer_start  # the next chunk starts at start + hop
      buffered = [data[keep:]] if keep < len(data) else []
      buffer_start = start + hop if keep < len(data) else buffer_start + len(data)
      return x

    def run(batch):
      nonlocal acc
      xs = np.stack([x for _, x in batch])
      if len(batch) < batch_size:
        xs = np.concatenate([xs, np.zeros((batch_size - len(batch),) + xs.shape[1:], np.float32)])
      ys = np.asarray(self.chunk_fn(xs), np.float32)  # (B, S, n, C)
      expected = (batch_size, len(self.sources), n, self.channels)
      if ys.shape != expected:
        raise ValueError(f"chunk function returned {ys.shape}, expected {expected}")
      for (j, x), y in zip(batch, ys):
        last = eof and j == num_chunks - 1
        y = np.moveaxis(y, 0, 1)  # (n, S, C)
        if acc is None:
          acc = np.zeros_like(y)
        acc += plan.window(j == 0, last)[:, None, None] * y
        count = total - j * hop if last else hop
        out = acc[:count]
        if residual:
          out = np.concatenate([out, (x[:count] - out.sum(axis=1))[:, None]], axis=1)
        out = _to_channels(out, in_channels)
        if not last:
          acc = np.concatenate([acc[hop:], np.zeros((hop,) + acc.shape[1:], np.float32)])
        if progress is not None:
          progress(count)
        yield out

    while True:
      # Chunk k can start when its input is complete and we know whether it is the last one:
      # past EOF, or once a sample beyond it has arrived (then it is not the last).
      while not eof and received <= k * hop + n:
        pull()
      if eof and k >= num_chunks:
        break
      batch.append((k, cut(k * hop)))
      k += 1
      if len(batch) == batch_size or (eof and k == num_chunks):
        yield from run(batch)
        batch = []

  def separate(self, mixture, sample_rate=audio.SAMPLE_RATE, *, residual=False, name="input",
               progress=None) -> Dict[str, np.ndarray]:
    """A whole (L, C) or (L,) array -> {name: (L, C) float32} at the input's sample rate."""
    x = np.asarray(mixture, np.float32)
    mono_1d = x.ndim == 1
    if mono_1d:
      x = x[:, None]
    length = x.shape[0]
    if sample_rate != audio.SAMPLE_RATE:
      x = audio.resample(x, sample_rate, audio.SAMPLE_RATE)
    blocks = list(self.stream([x], residual=residual, name=name, progress=progress))
    y = np.concatenate(blocks)  # (L44, S', C)
    if sample_rate != audio.SAMPLE_RATE:
      y = audio.resample(y.reshape(len(y), -1), audio.SAMPLE_RATE, sample_rate)
      y = y.reshape((len(y),) + blocks[0].shape[1:])
      y = np.pad(y, ((0, max(0, length - len(y))), (0, 0), (0, 0)))[:length]
    names = self.output_names(residual)
    return {s: (y[:, i, 0] if mono_1d else y[:, i]) for i, s in enumerate(names)}

  # -- files ---------------------------------------------------------------------------------

  def separate_file(self, path, out_dir, *, ext=".wav", subtype="PCM_16", residual=False,
                    overwrite=False, progress_bar=False, block_frames=audio.DEFAULT_BLOCK_FRAMES):
    """Separates one file into ``out_dir/<song>/<source><ext>``; returns {name: path}.

    Outputs keep the input's sample rate and channel count. Nothing is left behind on error.
    """
    source = audio.open_audio(path)
    info = source.info
    check_input(info, self.min_length)
    paths = output_paths(path, out_dir, self.output_names(residual), ext)
    if not overwrite:
      for p in paths.values():
        if os.path.exists(p):
          raise FileExistsError(f"{p} exists; not overwriting it (use --force)")
    song_dir = os.path.dirname(next(iter(paths.values())))
    created = song_dir  # the outermost folder this call creates (removed again on failure)
    while not os.path.isdir(os.path.dirname(created)):
      created = os.path.dirname(created)
    created = None if os.path.isdir(song_dir) else created
    os.makedirs(song_dir, exist_ok=True)
    writers = {}
    bar = None
    try:
      for s, p in paths.items():
        writers[s] = audio.AtomicAudioWriter(p, info.sample_rate, info.channels, subtype=subtype,
                                             overwrite=overwrite)
      counter = _Counter(source.blocks(block_frames))
      blocks = counter
      if info.sample_rate != audio.SAMPLE_RATE:
        blocks = audio.resample_stream(blocks, info.sample_rate, audio.SAMPLE_RATE, info.channels)
      if progress_bar:
        import tqdm  # pylint: disable=g-import-not-at-top
        seconds = info.frames / info.sample_rate if info.frames else None
        bar = tqdm.tqdm(total=seconds and round(seconds, 1), unit="s", desc=os.path.basename(path),
                        leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s [{elapsed}<"
                        "{remaining}]")
        progress = lambda count: bar.update(count / audio.SAMPLE_RATE)
      else:
        progress = None
      back = {s: audio.StreamingResampler(audio.SAMPLE_RATE, info.sample_rate, info.channels)
              for s in paths}
      names = list(paths)

      def write(s, y):
        # Back at the input's rate the stream can run a sample past the input's length.
        room = counter.count - writers[s].frames if counter.done else len(y)
        if room > 0:
          writers[s].write(y[:room])

      for out in self.stream(blocks, residual=residual, name=path, progress=progress):
        for i, s in enumerate(names):
          write(s, back[s].process(out[:, i]))
      for s in names:
        write(s, back[s].flush())
        short = counter.count - writers[s].frames
        if short > 0:
          writers[s].write(np.zeros((short, info.channels), np.float32))
      for s in names:
        writers[s].commit()
      return paths
    except BaseException:
      for w in writers.values():
        w.discard()
      folder = song_dir
      while created is not None:  # empty folders only: never anything another run wrote
        try:
          os.rmdir(folder)
        except OSError:
          break
        if folder == created:
          break
        folder = os.path.dirname(folder)
      raise
    finally:
      if bar is not None:
        bar.close()


class _Counter:
  """Passes blocks through, counting samples; ``done`` once the source is exhausted."""

  def __init__(self, blocks):
    self._it = iter(blocks)
    self.count, self.done = 0, False

  def __iter__(self):
    return self

  def __next__(self):
    try:
      block = next(self._it)
    except StopIteration:
      self.done = True
      raise
    self.count += len(block)
    return block


def check_input(info: audio.AudioInfo, min_length):
  """Errors that the header already shows: channel count, and (exact lengths only) too short."""
  if info.channels not in (1, 2):
    raise audio.AudioError(f"{info.path}: has {info.channels} channels; only mono or stereo "
                           "audio can be separated")
  if info.backend == "soundfile" and info.frames is not None:
    frames = audio.resampled_length(info.frames, info.sample_rate, audio.SAMPLE_RATE)
    if frames < min_length:
      raise audio.AudioError(
          f"{info.path}: too short: {info.frames} samples at {info.sample_rate} Hz "
          f"({info.frames / info.sample_rate:.3f} s); the model needs at least {min_length} "
          "samples at 44.1 kHz")


def song_name(path):
  base = os.path.basename(os.fspath(path).rstrip(os.sep))
  for suffix in (".stem.mp4", ".stem.m4a"):
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return os.path.splitext(base)[0]


def output_paths(path, out_dir, names, ext=".wav"):
  audio.output_format("x" + ext)
  folder = os.path.join(os.path.abspath(out_dir), song_name(path))
  return {s: os.path.join(folder, s + ext) for s in names}


def expand_inputs(inputs: Sequence[str]) -> List[str]:
  """Files as given, folders searched recursively for audio files (sorted); duplicates dropped."""
  files = []
  for item in inputs:
    if os.path.isdir(item):
      found = []
      for root, dirs, names in os.walk(item):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(names)
                  if f.lower().endswith(audio.AUDIO_EXTENSIONS) and not f.startswith(".")]
      if not found:
        raise audio.AudioError(f"{item}: folder contains no audio files "
                               f"({', '.join(audio.AUDIO_EXTENSIONS)})")
      files += found
    else:
      files.append(item)
  seen, unique = set(), []
  for f in files:
    key = os.path.realpath(f)
    if key not in seen:
      seen.add(key)
      unique.append(f)
  return unique


# ------------------------------------------------------------------------------------------------
# Command line.


def _parser():
  p = argparse.ArgumentParser(
      prog="python -m resunet_jax.separate",
      description="Separate audio files (any length, any format ffmpeg or soundfile reads) with a "
                  "resunet_jax model directory or training work directory.")
  p.add_argument("inputs", nargs="+", metavar="IN", help="audio files and/or folders")
  p.add_argument("--checkpoint", required=True,
                 help="model directory (python -m resunet_jax.convert) or training workdir")
  p.add_argument("--out", required=True, help="output folder: OUT/<song>/<source>.<format>")
  p.add_argument("--format", default="wav", choices=["wav", "flac"])
  p.add_argument("--subtype", default=None,
                 help="sample format: PCM_16 (default), PCM_24, FLOAT (wav only)")
  p.add_argument("--residual", action="store_true",
                 help="also write mixture minus the estimates (e.g. accompaniment of a vocals model)")
  p.add_argument("--scheme", default="crossfade", choices=SCHEMES,
                 help="crossfade: windowed overlap-add (default); authors: bytesep's chunking "
                      "(30 s, 15 s hop, central halves kept) for comparisons")
  p.add_argument("--chunk_seconds", type=float, default=DEFAULT_CHUNK_SECONDS)
  p.add_argument("--overlap_seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                 help="cross-fade length (<= chunk/2); ignored by --scheme authors")
  p.add_argument("--batch_size", type=int, default=1, help="chunks per model call")
  p.add_argument("--conv_backend", default="xla", choices=sorted(backends.BACKENDS),
                 help="convolution backend (resunet_jax.backends): xla (default) or cpu (faster "
                      "depthwise convolutions on CPU hosts)")
  p.add_argument("--force", action="store_true", help="overwrite existing outputs")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  runtime.set_xla_cpu_flags()  # before JAX starts its CPU backend
  ext = "." + args.format
  subtype = args.subtype or "PCM_16"
  if subtype == "FLOAT" and args.format == "flac":
    print("error: FLAC cannot store float samples; use --subtype PCM_16 or PCM_24", file=sys.stderr)
    return 2
  errors = []
  try:
    files = expand_inputs(args.inputs)
  except audio.AudioError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    model, variables, desc = checkpoint.load_model(args.checkpoint,
                                                   conv_backend=args.conv_backend)
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {args.checkpoint}: not a usable checkpoint: {e}", file=sys.stderr)
    return 2
  sources = list(desc["sources"])
  names = sources + ([residual_name(sources)] if args.residual else [])
  minimum = min_samples(model)

  # Everything the headers and the file system already tell, before any work: nothing is written
  # when one of the inputs is bad.
  seen = {}
  for f in files:
    try:
      check_input(audio.probe(f), minimum)
      for p in output_paths(f, args.out, names, ext).values():
        if p in seen:
          raise audio.AudioError(f"{f}: would write {p}, as {seen[p]} does (same song name)")
        seen[p] = f
        if os.path.exists(p) and not args.force:
          raise FileExistsError(f"{p} exists; not overwriting it (use --force)")
    except (audio.AudioError, FileExistsError, ValueError) as e:
      errors.append(str(e))
  if errors:
    for e in errors:
      print(f"error: {e}", file=sys.stderr)
    print("nothing was written", file=sys.stderr)
    return 2

  separator = SongSeparator.from_model(
      model, variables, sources, scheme=args.scheme, chunk_seconds=args.chunk_seconds,
      overlap_seconds=args.overlap_seconds, batch_size=args.batch_size)
  failed = 0
  for f in files:
    try:
      written = separator.separate_file(f, args.out, ext=ext, subtype=subtype,
                                        residual=args.residual, overwrite=args.force,
                                        progress_bar=not args.quiet)
    except (audio.AudioError, FileExistsError) as e:
      print(f"error: {e} (nothing written for it)", file=sys.stderr)
      failed += 1
      continue
    if not args.quiet:
      print(f"{f} -> {os.path.dirname(next(iter(written.values())))}/"
            f"{{{','.join(written)}}}{ext}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
