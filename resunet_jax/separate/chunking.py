"""Chunk plans and stitching: where chunks start, how their inputs are cut and their outputs summed.

A song is cut into chunks of ``chunk`` samples (44.1 kHz) that start every ``hop`` samples; the
outputs are overlap-added with per-chunk windows that sum to one at every sample. Two schemes
(:func:`make_plan`):

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

Both ends work on streams: :class:`ChunkCutter` keeps only the input that later chunks still need,
:class:`OverlapAdd` hands out output samples as soon as no later chunk adds to them. Pure numpy.
"""
import dataclasses
import functools
from typing import Optional

import numpy as np

from resunet_jax import sources

SCHEMES = ("crossfade", "authors")
DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 10.0


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
              overlap_seconds=DEFAULT_OVERLAP_SECONDS, sample_rate=sources.SAMPLE_RATE,
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


class ChunkCutter:
  """Cuts a stream of (n, C) blocks into chunk inputs, keeping only what later chunks need."""

  def __init__(self, plan: ChunkPlan, channels: int):
    self.plan = plan
    self.channels = channels
    self._blocks = []  # input blocks from absolute position `self._start`
    self._start = 0

  def append(self, block: np.ndarray) -> None:
    """Adds the next (n, channels) float32 block of the stream."""
    self._blocks.append(block)

  def cut(self, start: int) -> np.ndarray:
    """Input [start, start + chunk), zero past the end; drops what no later chunk needs.

    Chunks must be cut in order (start = k * hop for k = 0, 1, ...).
    """
    n, hop = self.plan.chunk, self.plan.hop
    if not self._blocks:  # a chunk entirely past the end (the authors' padding)
      self._blocks = [np.zeros((0, self.channels), np.float32)]
    data = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
    offset = start - self._start
    x = data[offset:offset + n]
    if len(x) < n:
      x = np.concatenate([x, np.zeros((n - len(x), self.channels), np.float32)])
    keep = start + hop - self._start  # the next chunk starts at start + hop
    self._blocks = [data[keep:]] if keep < len(data) else []
    self._start = start + hop if keep < len(data) else self._start + len(data)
    return x


class OverlapAdd:
  """Sums the windowed outputs of consecutive chunks; returns each sample once it is final."""

  def __init__(self, plan: ChunkPlan):
    self.plan = plan
    self._acc = None  # (chunk, ...): sums for positions [k*hop, k*hop + chunk) of the next chunk k

  def add(self, index: int, y: np.ndarray, last: bool, total: Optional[int] = None) -> np.ndarray:
    """Adds chunk ``index``'s float32 output ``y`` (chunk, ...) and returns the samples now final:
    the next ``hop`` of them, or for the last chunk all up to the song's length ``total``."""
    plan = self.plan
    if self._acc is None:
      self._acc = np.zeros_like(y)
    window = plan.window(index == 0, last)
    self._acc += window.reshape((-1,) + (1,) * (y.ndim - 1)) * y
    count = total - index * plan.hop if last else plan.hop
    out = self._acc[:count]
    if not last:
      self._acc = np.concatenate([self._acc[plan.hop:],
                                  np.zeros((plan.hop,) + self._acc.shape[1:], np.float32)])
    return out
