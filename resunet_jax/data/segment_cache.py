"""Random-access layout of a split's stems for cutting training segments cheaply.

TFDS stores one whole track per record, so cutting a 3 s segment from it would mean reading and
parsing a ~200 MB record. This module exports a split once (from the TFDS build, one track at a time)
into one flat file per source: ``<source>.i16``, raw little-endian int16, shape ``(total_samples, 2)``,
all tracks of the split concatenated, plus ``index.json`` (names, lengths, offsets). The files are
memory-mapped, so a segment is one contiguous ``(L, 2)`` slice: a 3 s read touches 517 KiB per stem,
and memory use is just the OS page cache (shared by all reader threads and processes).

Size: 4 stems x 2 channels x 2 bytes = 16 bytes per sample frame, 2.54 GB (2.37 GiB) per hour of
audio; MUSDB18 ``train_full`` (100 tracks, about 6.5 h) needs about 16.5 GB (15.4 GiB). The mixture is
not exported: training re-mixes the sources (REFERENCE §6.5).

The cache is written to a temporary folder and renamed into place (atomic; concurrent writers on one
host are safe, the loser's copy is discarded). It is keyed by config, builder version and split, and
rebuilt when the TFDS build's track list changes.
"""
import json
import logging
import os
import shutil
from typing import List, Optional

import numpy as np

from resunet_jax import fileutil
from resunet_jax import sources as sources_lib
from resunet_jax.data import stems_io

_log = logging.getLogger(__name__)
CACHE_FORMAT = 1


class SegmentCache:
  """Memory-mapped int16 stems of one split. ``segment`` returns a read-only (L, 2) int16 view."""

  def __init__(self, path: str):
    self.path = path
    with open(os.path.join(path, "index.json"), encoding="utf-8") as f:
      index = json.load(f)
    if index.get("format") != CACHE_FORMAT:
      raise ValueError(f"{path}: segment cache format {index.get('format')}, expected {CACHE_FORMAT}.")
    self.names: List[str] = index["names"]
    self.lengths = np.asarray(index["lengths"], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
    self.sources = tuple(index["sources"])
    total = int(self.offsets[-1])
    self._arrays = {
        s: np.memmap(os.path.join(path, s + ".i16"), dtype="<i2", mode="r",
                     shape=(total, stems_io.NUM_CHANNELS)) for s in self.sources}

  @property
  def num_tracks(self) -> int:
    return len(self.names)

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in self._arrays.values())

  def track(self, source: str, track: int) -> np.ndarray:
    return self._arrays[source][self.offsets[track]:self.offsets[track + 1]]

  def segment(self, source: str, track: int, start: int, length: int) -> np.ndarray:
    """Samples [start, start + length) of one track's stem; zero-padded past the track's end."""
    begin = self.offsets[track] + start
    end = min(begin + length, self.offsets[track + 1])
    x = self._arrays[source][begin:end]
    if x.shape[0] < length:  # tracks shorter than a segment (bytesep pads them the same way).
      x = np.concatenate([x, np.zeros((length - x.shape[0], x.shape[1]), x.dtype)])
    return x


def default_cache_root(builder) -> str:
  """``<TFDS data dir>/musdb18_segment_cache`` (next to, not inside, the TFDS dataset folder), or
  for remote TFDS data (gs://...) ``~/.cache/resunet_jax/musdb18_segment_cache`` on local disk."""
  if fileutil.is_url(builder.data_dir):
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "resunet_jax", "musdb18_segment_cache")
  # builder.data_dir is <root>/musdb18/<config>/<version>.
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))),
                      "musdb18_segment_cache")


def cache_path(builder, split: str, cache_dir: str = "") -> str:
  root = cache_dir or default_cache_root(builder)
  return os.path.join(root, builder.builder_config.name, str(builder.version), split)


def _expected_names(builder, split: str) -> Optional[List[str]]:
  from resunet_jax.data import musdb18  # pylint: disable=g-import-not-at-top
  tracks = builder.info.metadata.get("tracks") if builder.info.metadata else None
  if not tracks:
    return None
  return [name for name, _, _ in musdb18.split_tracks(builder, split)]


def open_or_build(builder, split: str, cache_dir: str = "",
                  sources=sources_lib.STEMS) -> SegmentCache:
  """The segment cache of ``split`` of a prepared musdb18 builder, written first if needed.

  Processes on one machine that share the cache folder take turns (a file lock): the first
  writes it, the others then open it.
  """
  path = cache_path(builder, split, cache_dir)
  with fileutil.file_lock(path + ".lock"):
    return _open_or_build(builder, split, path, sources)


def _open_or_build(builder, split, path, sources):
  expected = _expected_names(builder, split)
  if os.path.isfile(os.path.join(path, "index.json")):
    cache = SegmentCache(path)
    if (expected is None or sorted(cache.names) == sorted(expected)) and \
        set(sources) <= set(cache.sources):
      return cache
    _log.warning("Segment cache %s does not match the TFDS build; rebuilding it.", path)
    shutil.rmtree(path, ignore_errors=True)
  _write(builder, split, path, sources)
  return SegmentCache(path)


def _write(builder, split: str, path: str, sources) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import musdb18  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tf()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = fileutil.temp_dir(os.path.dirname(path), prefix=os.path.basename(path) + ".tmp-")
  try:
    skip = {s: tfds.decode.SkipDecoding() for s in stems_io.STEM_NAMES if s not in sources}
    ds = builder.as_dataset(split=musdb18.tfds_split(split, builder.info.splits),
                            shuffle_files=False, decoders=skip or None)
    names, lengths = [], []
    files = {s: open(os.path.join(tmp, s + ".i16"), "wb") for s in sources}
    try:
      for ex in tfds.as_numpy(ds):
        names.append(ex["name"].decode("utf-8"))
        lengths.append(int(ex["length"]))
        for s in sources:
          a = np.ascontiguousarray(ex[s], dtype="<i2")
          assert a.shape == (lengths[-1], stems_io.NUM_CHANNELS), (names[-1], s, a.shape)
          files[s].write(a.tobytes())
    finally:
      for f in files.values():
        f.close()
    if not names:
      raise ValueError(f"Split {split!r} of {builder.data_dir} has no tracks.")
    with open(os.path.join(tmp, "index.json"), "w", encoding="utf-8") as f:
      json.dump({"format": CACHE_FORMAT, "split": split, "sources": list(sources), "names": names,
                 "lengths": lengths, "tfds_dir": os.fspath(builder.data_dir)}, f)
    try:
      os.rename(tmp, path)
      _log.info("Wrote segment cache %s (%d tracks).", path, len(names))
    except OSError:  # another process finished first: keep theirs.
      _log.info("Segment cache %s was written concurrently; using the existing one.", path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
