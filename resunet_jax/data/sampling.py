"""Training examples: random segments with the paper's augmentations, cut from the segment cache.

Training example k of global batch n is a pure function of (seed, n, k): its random draws come from
``numpy.random.default_rng([seed, n, k])`` (a SeedSequence: no state is carried between examples), so
any example can be made on its own, by any thread or host (:mod:`pipeline` relies on it).

One example (REFERENCE §6.3-6.5), for each input source (e.g. vocals, accompaniment):
  * ``mix_audio`` excerpts (2 in the paper), each at a position drawn uniformly from the index of
    all start positions of all tracks of the split (hop 0.1 s, ``start + segment < length``; a track
    shorter than a segment has the single start 0 and is zero-padded). With ``remix`` each source
    and excerpt draws its own position (sources from unrelated tracks); without it excerpt j of all
    sources shares one position (a real mixture of one track, or a sum of 2 such with mix-audio);
  * every excerpt independently: L/R swap with probability 1/2, polarity flip of each channel with
    probability 1/2, gain uniform in ±gain_db dB (0 = off, as in the paper);
  * the source is the sum of its excerpts. "accompaniment" is drums + bass + other of one excerpt
    (same track, position and augmentation), like the authors' stored accompaniment.
Mixture = the sum of the input sources in the configured order (float32, left to right); the stored
MUSDB mixture is never used for training. Targets = the configured sources, each the realised signal
that went into that mixture (so "mixture == sum of targets" holds exactly when targets == inputs).

Difference from the authors' sampler: they walk a shuffled index per source (sampling without
replacement within a pass); here every position is an independent uniform draw from the same index
(with replacement), which gives the same distribution and makes examples addressable by (n, k).

Segments are cut from a memory-mapped int16 cache of the split (:mod:`segment_cache`); no segment
ever decodes or copies a whole track. Pure numpy: usable without TensorFlow.
"""
import dataclasses
import threading
from typing import List, Tuple

import numpy as np

from resunet_jax.data import recipes
from resunet_jax.data import segment_cache


def num_starts(lengths: np.ndarray, segment: int, hop: int) -> np.ndarray:
  """Start positions 0, hop, 2 hop, ... with start + segment < length; at least one (start 0)."""
  lengths = np.asarray(lengths, np.int64)
  n = np.where(lengths > segment, (lengths - segment - 1) // hop + 1, 1)
  return n.astype(np.int64)


@dataclasses.dataclass
class Excerpt:
  """The draws for one excerpt of one input source."""
  track: int
  start: int
  swap: bool
  signs: Tuple[float, float]
  gain_db: float


class SegmentSampler:
  """Examples as a pure function of (seed, step, k), cut from a :class:`SegmentCache`."""

  def __init__(self, cache: segment_cache.SegmentCache, recipe: recipes.Recipe, seed: int):
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self.cache, self.recipe, self.seed = cache, recipe, int(seed)
    counts = num_starts(cache.lengths, recipe.segment_samples, recipe.hop_samples)
    self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.num_positions = int(self._first[-1])
    self._local = threading.local()
    missing = {st for _, sts in recipe.units for st in sts} - set(cache.sources)
    if missing:
      raise ValueError(f"Segment cache {cache.path} lacks sources {sorted(missing)}.")

  def _position(self, index: int) -> Tuple[int, int]:
    track = int(np.searchsorted(self._first, index, side="right")) - 1
    return track, int(index - self._first[track]) * self.recipe.hop_samples

  def draws(self, step: int, k: int) -> List[List[Excerpt]]:
    """Per input source, its excerpts. The same numbers are drawn whatever the switches say, so
    turning one augmentation off leaves the others' draws unchanged."""
    r = self.recipe
    rng = np.random.default_rng([self.seed, int(step), int(k)])
    shared = rng.integers(0, self.num_positions, size=max(r.mix_counts))
    out = []
    for m in r.mix_counts:
      own = rng.integers(0, self.num_positions, size=m)
      swap = rng.random(m) < 0.5
      flip = rng.random((m, 2)) < 0.5
      gain = rng.uniform(-1.0, 1.0, size=m)
      excerpts = []
      for j in range(m):
        track, start = self._position(int(own[j] if r.remix else shared[j]))
        signs = tuple(-1.0 if (f and r.flip_polarity) else 1.0 for f in flip[j])
        excerpts.append(Excerpt(track=track, start=start, swap=bool(swap[j] and r.swap_channels),
                                signs=signs, gain_db=float(gain[j] * r.gain_db)))
      out.append(excerpts)
    return out

  def _scratch(self, n: int) -> List[np.ndarray]:
    """Per-thread reusable (L, 2) float32 buffers: fresh memory costs a page fault per 4 KiB."""
    bufs = getattr(self._local, "bufs", None)
    if bufs is None or len(bufs) < n:
      bufs = [np.empty((self.recipe.segment_samples, 2), np.float32) for _ in range(n)]
      self._local.bufs = bufs
    return bufs

  def example_into(self, step: int, k: int, mixture: np.ndarray, targets: np.ndarray) -> None:
    """Writes example (step, k): mixture (L, 2) and targets (S, L, 2), float32."""
    r, length = self.recipe, self.recipe.segment_samples
    draws = self.draws(step, k)
    # A target made of exactly one unit is accumulated in place in the output array.
    direct = {tu[0]: t for t, tu in enumerate(r.target_units) if len(tu) == 1}
    scratch = self._scratch(2 + len(r.units))
    excerpt_buf = scratch[0]
    buffers = [targets[direct[u]] if u in direct else scratch[2 + u] for u in range(len(r.units))]
    for u, (i, stems) in enumerate(r.units):
      for j, ex in enumerate(draws[i]):
        # The excerpt's stems at one position, summed and scaled (gain / 32768) on contiguous
        # data; the channel swap and sign flips are then applied once, while accumulating.
        gain = np.float32(10.0 ** (ex.gain_db / 20.0) / 32768.0)
        x = [self.cache.segment(stem, ex.track, ex.start, length) for stem in stems]
        if len(x) == 1:
          np.multiply(x[0], gain, out=excerpt_buf)
        else:
          np.add(x[0], x[1], out=excerpt_buf, dtype=np.float32)
          for y in x[2:]:
            np.add(excerpt_buf, y, out=excerpt_buf)
          excerpt_buf *= gain
        _accumulate_oriented(buffers[u], excerpt_buf, ex.swap, ex.signs, first=(j == 0))
    for t, tu in enumerate(r.target_units):
      if len(tu) > 1:
        np.add(buffers[tu[0]], buffers[tu[1]], out=targets[t])
        for u in tu[2:]:
          targets[t] += buffers[u]
    if len(buffers) == 1:
      np.copyto(mixture, buffers[0])
    else:
      np.add(buffers[0], buffers[1], out=mixture)
      for u in range(2, len(buffers)):
        mixture += buffers[u]

  def example(self, step: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """mixture (L, 2) float32 and targets (S, L, 2) float32 of global example k at step ``step``."""
    length = self.recipe.segment_samples
    mixture = np.empty((length, 2), np.float32)
    targets = np.empty((len(self.recipe.targets), length, 2), np.float32)
    self.example_into(step, k, mixture, targets)
    return mixture, targets

  def batch(self, step: int, first_k: int, size: int, pool=None) -> Tuple[np.ndarray, np.ndarray]:
    """Examples first_k ... first_k + size - 1 of global step ``step``: (B, L, 2), (B, S, L, 2).

    With a thread pool the examples are cut in parallel (numpy releases the GIL in its loops);
    each is a pure function of its (step, k), so the result does not depend on the threads.
    """
    length = self.recipe.segment_samples
    mixture = np.empty((size, length, 2), np.float32)
    targets = np.empty((size, len(self.recipe.targets), length, 2), np.float32)

    def one(b):
      self.example_into(int(step), int(first_k) + b, mixture[b], targets[b])
    if pool is None:
      for b in range(size):
        one(b)
    else:
      for future in [pool.submit(one, b) for b in range(size)]:
        future.result()
    return mixture, targets


# Orientation of a stereo excerpt as an operation on z = left + i*right (the (L, 2) float32 array
# viewed as complex64): (swap, sign_left, sign_right) -> (conjugate first?, then multiply by).
# E.g. swap: right + i*left = i*conj(z); flip the right channel only: left - i*right = conj(z).
# Every case is one or two contiguous passes instead of strided per-channel work (about 2x faster),
# and exact: the factors are 0 and +-1.
_ORIENTATION = {
    (False, 1.0, 1.0): (False, 1), (False, -1.0, -1.0): (False, -1),
    (False, 1.0, -1.0): (True, 1), (False, -1.0, 1.0): (True, -1),
    (True, 1.0, 1.0): (True, 1j), (True, -1.0, -1.0): (True, -1j),
    (True, 1.0, -1.0): (False, -1j), (True, -1.0, 1.0): (False, 1j),
}


def _accumulate_oriented(dst: np.ndarray, src: np.ndarray, swap: bool, signs, first: bool) -> None:
  """dst[:, c] (= or +=) signs[c] * src[:, 1 - c if swap else c]; C-contiguous (L, 2) float32.

  ``src`` is scratch: it is overwritten.
  """
  conjugate, factor = _ORIENTATION[(bool(swap), float(signs[0]), float(signs[1]))]
  z = src.view(np.complex64)[:, 0]
  d = dst.view(np.complex64)[:, 0]
  if conjugate:
    np.conjugate(z, out=z)
  if isinstance(factor, complex):
    np.multiply(z, np.complex64(1j), out=z)
  positive = (factor.imag if isinstance(factor, complex) else factor) > 0
  if first:
    if positive:
      np.copyto(d, z)
    else:
      np.negative(z, out=d)
  elif positive:
    np.add(d, z, out=d)
  else:
    np.subtract(d, z, out=d)
