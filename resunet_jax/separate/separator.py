"""The song separator: a model (or any fixed-shape chunk function) applied to songs and streams.

:class:`SongSeparator` runs the chunks of a :mod:`chunking` plan through one compiled function,
``batch_size`` at a time and always with the same shape (the last ones zero-padded), so the model is
compiled once; :meth:`SongSeparator.stream` consumes input blocks as they come and yields output
blocks as soon as no later chunk can change them. Files are decoded in blocks
(:mod:`resunet_jax.audio`), resampled to 44.1 kHz on the fly when needed and back to their own rate
on output, and written into temporary files renamed into place at the end.

Channels: the released models are stereo; a mono input is duplicated into both channels and the
outputs are averaged back to mono. The optional residual (``residual=True``) is mixture minus the
sum of the estimates at 44.1 kHz; it is named after what it estimates when that is clear
("accompaniment" for a vocals model, "vocals" for an accompaniment model), else "residual".
"""
import os
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence

import numpy as np

from resunet_jax import audio
from resunet_jax import sources as sources_lib
from resunet_jax.separate import chunking
from resunet_jax.separate import files


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
  stems_of = {name: set(stems) for name, stems in sources_lib.SOURCE_STEMS.items()}
  parts = [stems_of.get(s) for s in sources]
  if any(p is None for p in parts) or sum(map(len, parts)) != len(set().union(*parts)):
    return "residual"  # unknown names, or stems counted twice
  rest = set(sources_lib.STEMS).difference(*parts)
  for name, stems in stems_of.items():
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



class SongSeparator:
  """Separates whole songs or streams with a fixed-shape chunk function.

  ``chunk_fn``: float32 (batch_size, chunk, channels) -> (batch_size, S, chunk, channels), e.g.
  the compiled model (:meth:`from_model`) or any stand-in with that contract.
  """

  def __init__(self, chunk_fn: Callable[[np.ndarray], np.ndarray], sources: Sequence[str],
               plan: chunking.ChunkPlan, *, batch_size=1, channels=2, min_length=1):
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
                 chunk_seconds=chunking.DEFAULT_CHUNK_SECONDS,
                 overlap_seconds=chunking.DEFAULT_OVERLAP_SECONDS, batch_size=1):
    """Compiles ``model.apply`` once for (batch_size, chunk, channels) float32 inputs."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    if model.num_sources != len(sources):
      raise ValueError(f"the model separates {model.num_sources} source(s) but {len(sources)} "
                       f"name(s) were given: {list(sources)}")
    plan = chunking.make_plan(scheme, chunk_seconds, overlap_seconds,
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
    cutter = chunking.ChunkCutter(plan, self.channels)  # inputs in the model's channels
    summed = chunking.OverlapAdd(plan)  # outputs (n, S, C_model)
    received, eof = 0, False
    total = num_chunks = None
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
              f"{name}: too short: {total} samples at 44.1 kHz "
              f"({total / sources_lib.SAMPLE_RATE:.3f} s); the model needs at least "
              f"{self.min_length}") from None
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
        cutter.append(_to_channels(block, self.channels))
        received += len(block)

    def run(batch):
      xs = np.stack([x for _, x in batch])
      if len(batch) < batch_size:
        xs = np.concatenate([xs, np.zeros((batch_size - len(batch),) + xs.shape[1:], np.float32)])
      ys = np.asarray(self.chunk_fn(xs), np.float32)  # (B, S, n, C)
      expected = (batch_size, len(self.sources), n, self.channels)
      if ys.shape != expected:
        raise ValueError(f"chunk function returned {ys.shape}, expected {expected}")
      for (j, x), y in zip(batch, ys):
        last = eof and j == num_chunks - 1
        out = summed.add(j, np.moveaxis(y, 0, 1), last, total)  # (count, S, C)
        count = len(out)
        if residual:
          out = np.concatenate([out, (x[:count] - out.sum(axis=1))[:, None]], axis=1)
        out = _to_channels(out, in_channels)
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
      batch.append((k, cutter.cut(k * hop)))
      k += 1
      if len(batch) == batch_size or (eof and k == num_chunks):
        yield from run(batch)
        batch = []

  def separate(self, mixture, sample_rate=sources_lib.SAMPLE_RATE, *, residual=False, name="input",
               progress=None) -> Dict[str, np.ndarray]:
    """A whole (L, C) or (L,) array -> {name: (L, C) float32} at the input's sample rate."""
    x = np.asarray(mixture, np.float32)
    mono_1d = x.ndim == 1
    if mono_1d:
      x = x[:, None]
    length = x.shape[0]
    if sample_rate != sources_lib.SAMPLE_RATE:
      x = audio.resample(x, sample_rate, sources_lib.SAMPLE_RATE)
    blocks = list(self.stream([x], residual=residual, name=name, progress=progress))
    y = np.concatenate(blocks)  # (L44, S', C)
    if sample_rate != sources_lib.SAMPLE_RATE:
      y = audio.resample(y.reshape(len(y), -1), sources_lib.SAMPLE_RATE, sample_rate)
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
    files.check_input(info, self.min_length)
    paths = files.output_paths(path, out_dir, self.output_names(residual), ext)
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
      counter = files.Counter(source.blocks(block_frames))
      blocks = counter
      if info.sample_rate != sources_lib.SAMPLE_RATE:
        blocks = audio.resample_stream(blocks, info.sample_rate, sources_lib.SAMPLE_RATE,
                                       info.channels)
      if progress_bar:
        import tqdm  # pylint: disable=g-import-not-at-top
        seconds = info.frames / info.sample_rate if info.frames else None
        bar = tqdm.tqdm(total=seconds and round(seconds, 1), unit="s", desc=os.path.basename(path),
                        leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s [{elapsed}<"
                        "{remaining}]")
        progress = lambda count: bar.update(count / sources_lib.SAMPLE_RATE)
      else:
        progress = None
      back = {s: audio.StreamingResampler(sources_lib.SAMPLE_RATE, info.sample_rate, info.channels)
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

