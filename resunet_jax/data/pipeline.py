"""MUSDB18 pipelines: random training segments with the paper's augmentations, whole evaluation tracks.

Training example k of global batch n is a pure function of (seed, n, k): its random draws come from
``numpy.random.default_rng([seed, n, k])`` (a SeedSequence: no state is carried between examples), so
resuming at ``start_step`` and splitting the global batch over hosts both reproduce exactly what one
uninterrupted single-host run sees. Host p makes only examples k in [p*B_host, (p+1)*B_host).

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

Segments are cut from a memory-mapped int16 cache of the split (:mod:`segment_cache`), written once
after the TFDS build; no segment ever decodes or copies a whole track. The tf.data graph is
``range(start_step, ...) -> map(numpy_function: one host batch) -> prefetch``; inside a batch the
examples are cut by a thread pool (numpy releases the GIL), two batches are made at once.
"""
import atexit
import concurrent.futures
import dataclasses
import gc
import logging
import os
import shutil
import threading
import weakref
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from resunet_jax import fileutil
from resunet_jax.data import musdb18
from resunet_jax.data import segment_cache
from resunet_jax.data import stems_io
from resunet_jax.data import synthetic

_log = logging.getLogger(__name__)

SOURCE_STEMS: Dict[str, Tuple[str, ...]] = {
    "drums": ("drums",), "bass": ("bass",), "other": ("other",), "vocals": ("vocals",),
    "accompaniment": ("drums", "bass", "other"),
}
BUILTIN_VERSION = "v1"  # bump when the built-in data set's contents change.


# ----------------------------------------------------------------------------------------------
# Config.


def default_data_config() -> ml_collections.ConfigDict:
  """``config.data`` with the paper's recipe (vocals target, REFERENCE §6.1-6.5)."""
  c = ml_collections.ConfigDict()
  c.name = "musdb18"
  c.variant = "stem"  # "stem": compressed .stem.mp4 (the paper's data); "hq": MUSDB18-HQ wavs.
  c.manual_dir = ""  # folder with train/ and test/; "" = small built-in synthetic + real excerpt set.
  c.data_dir = ""  # TFDS data dir; "" = TFDS default (or a cache dir for the built-in set).
  c.cache_dir = ""  # segment cache root; "" = <data_dir>/musdb18_segment_cache.
  c.builtin_cache_dir = ""  # where the built-in set is written; "" = ~/.cache/resunet_jax.
  c.train_split = "train_full"  # the authors trained on all 100 training tracks (§6.6).
  c.eval_split = "test"
  c.validation_split = "test"  # the only split held out from train_full (the authors used test).
  c.sample_rate = 44100
  c.segment_seconds = 3.0
  c.start_hop_seconds = 0.1  # grid of segment start positions (bytesep's index hop).
  c.input_sources = ("vocals", "accompaniment")  # summed into the mixture.
  c.target_sources = ("vocals",)
  # type_safe=False: mix_audio may be an int or a {source: count} mapping.
  c.augment = ml_collections.ConfigDict(dict(
      remix=True,  # each source (and excerpt) from an independent track and position.
      mix_audio=2,  # excerpts summed per source; int or {source: k}; 1 = off. 4-stem configs: 1.
      swap_channels=True,  # random L/R swap (always on in the authors' code, §6.4).
      flip_polarity=True,  # random sign per channel (always on in the authors' code).
      gain_db=0.0,  # max |random gain| in dB; 0 = off (the paper's magnitude_scale was off).
  ), type_safe=False)
  c.num_workers = 0  # threads cutting the examples of a batch; 0 = one per CPU core.
  c.num_parallel_calls = 2  # host batches made at once (tf.data map parallelism; -1 = AUTOTUNE).
  c.prefetch_batches = 2
  return c


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The validated, hashable form of a data config's sampling and augmentation settings."""
  segment_samples: int
  hop_samples: int
  inputs: Tuple[str, ...]
  targets: Tuple[str, ...]
  mix_counts: Tuple[int, ...]  # per input source
  remix: bool
  swap_channels: bool
  flip_polarity: bool
  gain_db: float
  # Buffers ("units"): (input index, stems). An input is split into per-stem units only when a
  # target needs part of it (e.g. target drums from input accompaniment).
  units: Tuple[Tuple[int, Tuple[str, ...]], ...]
  target_units: Tuple[Tuple[int, ...], ...]


def _mix_counts(mix_audio, inputs: Sequence[str]) -> Tuple[int, ...]:
  if isinstance(mix_audio, str):  # "vocals:2,accompaniment:1" (command-line friendly).
    mix_audio = dict((k.strip(), int(v)) for k, v in (kv.split(":") for kv in mix_audio.split(",")))
  if isinstance(mix_audio, (int, np.integer)):
    counts = {s: int(mix_audio) for s in inputs}
  else:
    mapping = dict(mix_audio)
    unknown = set(mapping) - set(inputs)
    if unknown:
      raise ValueError(f"augment.mix_audio names {sorted(unknown)}, not input sources {inputs}.")
    counts = {s: int(mapping.get(s, 1)) for s in inputs}
  if any(v < 1 for v in counts.values()):
    raise ValueError(f"augment.mix_audio must be >= 1 (1 = off), got {counts}.")
  return tuple(counts[s] for s in inputs)


def recipe_from_config(cfg) -> Recipe:
  if int(cfg.sample_rate) != stems_io.SAMPLE_RATE:
    raise ValueError(f"MUSDB18 is {stems_io.SAMPLE_RATE} Hz; resampling is not implemented "
                     f"(data.sample_rate={cfg.sample_rate}).")
  inputs, targets = tuple(cfg.input_sources), tuple(cfg.target_sources)
  for s in inputs + targets:
    if s not in SOURCE_STEMS:
      raise ValueError(f"Unknown source {s!r}; choose from {sorted(SOURCE_STEMS)}.")
  if not inputs or not targets:
    raise ValueError("input_sources and target_sources must not be empty.")
  covered = [st for s in inputs for st in SOURCE_STEMS[s]]
  if len(covered) != len(set(covered)):
    raise ValueError(f"input_sources {inputs} overlap (a stem would be counted twice).")
  units = []
  for i, s in enumerate(inputs):
    stems = set(SOURCE_STEMS[s])
    split = any(0 < len(stems & set(SOURCE_STEMS[t])) < len(stems) for t in targets)
    units += [(i, (st,)) for st in SOURCE_STEMS[s]] if split else [(i, SOURCE_STEMS[s])]
  target_units = []
  for t in targets:
    want = set(SOURCE_STEMS[t])
    chosen = tuple(u for u, (_, st) in enumerate(units) if set(st) <= want)
    if set(st for u in chosen for st in units[u][1]) != want:
      raise ValueError(f"Target {t!r} is not part of the mixture of input_sources {inputs}.")
    target_units.append(chosen)
  aug = cfg.augment
  segment = int(round(float(cfg.segment_seconds) * stems_io.SAMPLE_RATE))
  hop = int(round(float(cfg.get("start_hop_seconds", 0.1)) * stems_io.SAMPLE_RATE))
  if segment <= 0 or hop <= 0:
    raise ValueError("segment_seconds and start_hop_seconds must be positive.")
  return Recipe(
      segment_samples=segment, hop_samples=hop, inputs=inputs, targets=targets,
      mix_counts=_mix_counts(aug.mix_audio, inputs), remix=bool(aug.remix),
      swap_channels=bool(aug.swap_channels), flip_polarity=bool(aug.flip_polarity),
      gain_db=float(aug.gain_db), units=tuple(units), target_units=tuple(target_units))


# ----------------------------------------------------------------------------------------------
# Segment sampling (pure numpy; usable without TF).


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

  def __init__(self, cache: segment_cache.SegmentCache, recipe: Recipe, seed: int):
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


# ----------------------------------------------------------------------------------------------
# Data preparation: built-in data, TFDS build, segment cache.


def _default_cache_home() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "resunet_jax")


_builtin_lock = threading.Lock()


def builtin_manual_dir(cache_dir: Optional[str] = None, variant: str = "stem") -> str:
  """A ready MUSDB18-shaped manual dir: 6 synthetic tracks (12-18 s) + stempeg's real excerpt.

  train/: 4 tracks (2 of them validation tracks), test/: 2 synthetic tracks and "The Easton
  Ellises - Falcon 69" (6 s, real MUSDB18 audio). Written once under ``cache_dir`` (default
  ``~/.cache/resunet_jax``), into a temporary folder renamed into place (atomic).
  """
  root = os.path.join(cache_dir or _default_cache_home(), f"musdb18_builtin_{BUILTIN_VERSION}")
  path = os.path.join(root, variant)
  if os.path.isdir(path):
    return path
  with _builtin_lock:
    if os.path.isdir(path):
      return path
    os.makedirs(root, exist_ok=True)
    tmp = fileutil.temp_dir(root, prefix=f"{variant}.tmp-")
    try:
      synthetic.write_musdb18(tmp, variant, tracks={"train": 4, "test": 2}, seconds=(12.0, 18.0),
                              seed=2021, with_example=True)
      try:
        os.rename(tmp, path)
      except OSError:  # written concurrently by another process.
        pass
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def resolve_dirs(cfg) -> Tuple[str, str, str]:
  """(variant, manual_dir, data_dir) with the built-in defaults filled in."""
  variant = cfg.variant
  if variant not in ("stem", "hq"):
    raise ValueError(f"data.variant must be 'stem' or 'hq', got {variant!r}.")
  manual_dir, data_dir = cfg.manual_dir, cfg.data_dir
  if not manual_dir:
    builtin_home = cfg.get("builtin_cache_dir", "") or None
    manual_dir = builtin_manual_dir(builtin_home, variant)
    # Never mix the built-in set into a real TFDS data dir: TFDS would treat it as the dataset.
    data_dir = data_dir or os.path.join(os.path.dirname(manual_dir), "tfds")
  return variant, manual_dir, data_dir


_prepare_lock = threading.Lock()


def prepare(cfg):
  """The prepared musdb18 builder for a data config (built offline from the manual dir if needed)."""
  variant, manual_dir, data_dir = resolve_dirs(cfg)
  with _prepare_lock:
    builder = musdb18.build(variant, manual_dir, data_dir)
  recorded = (builder.info.metadata or {}).get("tracks")
  if recorded and os.path.isdir(manual_dir):
    now = musdb18.assign_splits(musdb18.find_tracks(manual_dir, variant))
    if {s: [n for n, _ in v] for s, v in now.items()} != {s: recorded.get(s, []) for s in now}:
      _log.warning("The TFDS build in %s was made from a different set of tracks than %s now "
                   "holds; delete it (or use another data_dir) to rebuild.", builder.data_dir,
                   manual_dir)
  return builder


def training_cache(cfg, split: Optional[str] = None) -> segment_cache.SegmentCache:
  builder = prepare(cfg)
  return segment_cache.open_or_build(builder, split or cfg.train_split,
                                     cache_dir=cfg.get("cache_dir", ""))


# ----------------------------------------------------------------------------------------------
# Training batches.


_live_iterators = weakref.WeakSet()
_atexit_registered = False


def _close_live_iterators() -> None:
  # A tf.data pipeline whose threads are inside tf.numpy_function can deadlock Python's shutdown;
  # closing the iterators first (atexit runs before finalisation) avoids that.
  for it in list(_live_iterators):
    it.close()


class BatchIterator:
  """Python iterator over host batches; ``step`` is the global step of the next batch.

  ``close()`` (or ``with``) stops the background threads; live iterators are closed at exit.
  """

  def __init__(self, dataset, start_step: int, sampler: SegmentSampler, pool=None):
    global _atexit_registered
    self.dataset = dataset
    self._pool = pool
    self.step = start_step
    self.sampler = sampler
    self._it = dataset.as_numpy_iterator()
    _live_iterators.add(self)
    if not _atexit_registered:  # registered after TF's own handlers, so it runs before them.
      atexit.register(_close_live_iterators)
      _atexit_registered = True

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      raise StopIteration
    batch = next(self._it)
    self.step += 1
    return batch

  def close(self) -> None:
    self._it = None
    gc.collect()  # the tf.data iterator's resources go with its last reference.
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def train_batches(data_config, *, seed: int, global_batch_size: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  local_device_count: Optional[int] = None, split: Optional[str] = None
                  ) -> BatchIterator:
  """Infinite host batches ``{"mixture": (B_host, L, 2), "targets": (B_host, S, L, 2)}`` float32.

  B_host = global_batch_size // process_count; host ``process_index`` makes global examples
  [process_index * B_host, (process_index + 1) * B_host) of every step. With
  ``local_device_count`` the leading axis becomes (local_device_count, B_host // local_device_count).
  """
  from resunet_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tf()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count "
                     f"{process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  b_host = global_batch_size // process_count
  if local_device_count and b_host % local_device_count:
    raise ValueError(f"Host batch {b_host} is not divisible by local_device_count "
                     f"{local_device_count}.")
  recipe = recipe_from_config(data_config)
  cache = training_cache(data_config, split)
  sampler = SegmentSampler(cache, recipe, seed)
  length, num_targets = recipe.segment_samples, len(recipe.targets)
  first_k = process_index * b_host
  workers = int(data_config.get("num_workers", 0)) or os.cpu_count() or 1
  pool = concurrent.futures.ThreadPoolExecutor(min(workers, b_host), "musdb18_segments")

  # One tf.numpy_function call makes a whole host batch (no per-example tensors and no tf.data
  # batching copy: measured ~20-30% less CPU per segment than a per-example map + batch).
  def make(step):
    mixture, targets = tf.numpy_function(
        lambda n: sampler.batch(n, first_k, b_host, pool), [step], [tf.float32, tf.float32],
        stateful=False)
    mixture = tf.ensure_shape(mixture, (b_host, length, 2))
    targets = tf.ensure_shape(targets, (b_host, num_targets, length, 2))
    if local_device_count:
      per_device = b_host // local_device_count
      mixture = tf.reshape(mixture, (local_device_count, per_device, length, 2))
      targets = tf.reshape(targets, (local_device_count, per_device, num_targets, length, 2))
    return {"mixture": mixture, "targets": targets}

  ds = tf.data.Dataset.range(start_step, 2 ** 62)
  ds = ds.map(make, num_parallel_calls=int(data_config.get("num_parallel_calls", 2)),
              deterministic=True)
  ds = ds.prefetch(int(data_config.get("prefetch_batches", 2)))
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return BatchIterator(ds, start_step, sampler, pool)


# ----------------------------------------------------------------------------------------------
# Evaluation: whole tracks, and a fixed set of validation segments.


def split_track_order(builder, split: str) -> List[Tuple[str, str, int]]:
  """[(name, stored split, index in it)] in reading order: each stored part in name order."""
  tracks = (builder.info.metadata or {}).get("tracks") or {}
  parts = musdb18.tfds_split(split, builder.info.splits).split("+")
  return [(n, p, i) for p in parts for i, n in enumerate(tracks.get(p, []))]


def _read_tracks(builder, order: Sequence[Tuple[str, str, int]]) -> Iterator[dict]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for name, part, index in order:
    ds = builder.as_dataset(split=f"{part}[{index}:{index + 1}]", shuffle_files=False)
    (ex,) = list(tfds.as_numpy(ds))
    got = ex["name"].decode("utf-8")
    if got != name:
      raise RuntimeError(f"Expected track {name!r} at {part}[{index}], found {got!r}.")
    yield ex


def _float_stems(ex) -> Dict[str, np.ndarray]:
  stems = {s: stems_io.int16_to_float(ex[s]) for s in stems_io.SOURCE_NAMES}
  stems["accompaniment"] = (stems["drums"] + stems["bass"]) + stems["other"]
  return stems


def eval_tracks(data_config, split: Optional[str] = None, *, num_tracks: Optional[int] = None,
                track_names: Optional[Sequence[str]] = None) -> Iterator[dict]:
  """Whole tracks of a split: {"name", "mixture" (L, 2), "stems" {source: (L, 2)}, "sample_rate"}.

  Order: name order (for "train_full": the train part, then the validation part). ``num_tracks``
  keeps the first N; ``track_names`` picks tracks by name, in the given order. The mixture is the
  release's own mixture (for the compressed release it is not exactly the sum of the stems).
  """
  from resunet_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tf()
  builder = prepare(data_config)
  order = split_track_order(builder, split or data_config.eval_split)
  if track_names is not None:
    by_name = {o[0]: o for o in order}
    unknown = [n for n in track_names if n not in by_name]
    if unknown:
      raise KeyError(f"Tracks {unknown} are not in split {split or data_config.eval_split!r}; "
                     f"it has {sorted(by_name)}.")
    order = [by_name[n] for n in track_names]
  if num_tracks is not None:
    order = order[:num_tracks]
  for ex in _read_tracks(builder, order):
    yield {"name": ex["name"].decode("utf-8"),
           "mixture": stems_io.int16_to_float(ex["mixture"]),
           "stems": _float_stems(ex),
           "sample_rate": stems_io.SAMPLE_RATE}


def validation_segments(data_config, *, split: Optional[str] = None, num_segments: int = 32,
                        seed: int = 0, min_target_rms: float = 1e-3) -> Dict[str, np.ndarray]:
  """A fixed, deterministic set of un-augmented segments for periodic validation.

  Segment i of N comes from track floor(i T / N) of the split's T tracks (name order: spread over
  the split), at a start drawn with ``default_rng([seed, i])`` from the track's start grid; up to 10
  draws are tried to find one where every target's RMS is at least ``min_target_rms`` (-60 dBFS),
  so SDR is defined. Mixture = sum of the input sources of that same segment (as in training,
  without remix or augmentation). Returns {"mixture": (N, L, 2), "targets": (N, S, L, 2),
  "names": [N], "starts": (N,)}. Reads each used track once; call it once and keep the result.
  """
  from resunet_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tf()
  recipe = recipe_from_config(data_config)
  builder = prepare(data_config)
  split = split or data_config.get("validation_split", "test")
  order = split_track_order(builder, split)
  if not order:
    raise ValueError(f"Split {split!r} has no tracks.")
  length = recipe.segment_samples
  mixture = np.zeros((num_segments, length, 2), np.float32)
  targets = np.zeros((num_segments, len(recipe.targets), length, 2), np.float32)
  names, starts = [""] * num_segments, np.zeros(num_segments, np.int64)
  wanted = {}
  for i in range(num_segments):
    wanted.setdefault(i * len(order) // num_segments, []).append(i)
  used = [order[t] for t in sorted(wanted)]
  for t, ex in zip(sorted(wanted), _read_tracks(builder, used)):
    n = int(num_starts(np.array([ex["length"]]), length, recipe.hop_samples)[0])
    for i in wanted[t]:
      rng = np.random.default_rng([int(seed), i])
      for _ in range(10):
        start = int(rng.integers(0, n)) * recipe.hop_samples
        cut = {s: stems_io.int16_to_float(_cut(ex[s], start, length)) for s in stems_io.SOURCE_NAMES}
        tgt = [_sum_stems(cut, SOURCE_STEMS[s]) for s in recipe.targets]
        if all(np.sqrt(np.mean(np.square(x))) >= min_target_rms for x in tgt):
          break
      for s in recipe.inputs:
        mixture[i] += _sum_stems(cut, SOURCE_STEMS[s])
      targets[i] = np.stack(tgt)
      names[i], starts[i] = ex["name"].decode("utf-8"), start
  return {"mixture": mixture, "targets": targets, "names": names, "starts": starts}


def _cut(x: np.ndarray, start: int, length: int) -> np.ndarray:
  y = x[start:start + length]
  if y.shape[0] < length:
    y = np.concatenate([y, np.zeros((length - y.shape[0], y.shape[1]), y.dtype)])
  return y


def _sum_stems(stems: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
  out = stems[names[0]].copy()
  for n in names[1:]:
    out += stems[n]
  return out
