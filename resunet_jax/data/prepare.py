"""Data preparation: the built-in data set, the TFDS build of a manual dir, the segment cache.

:func:`prepare` returns the ``musdb18`` TFDS builder of a data config, built offline from
``data.manual_dir`` on first use (with ``manual_dir=""`` from the small built-in set, written once
by :func:`builtin_manual_dir`); :func:`training_cache` the memory-mapped segment cache of a split
(:mod:`segment_cache`), written once after the build.
"""
import logging
import os
import shutil
import threading
from typing import Optional, Tuple

from resunet_jax import fileutil
from resunet_jax.data import musdb18
from resunet_jax.data import segment_cache
from resunet_jax.data import synthetic

_log = logging.getLogger(__name__)

BUILTIN_VERSION = "v1"  # bump when the built-in data set's contents change.


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
  os.makedirs(root, exist_ok=True)
  # The thread lock for this process, the file lock for other processes on this machine.
  with _builtin_lock, fileutil.file_lock(os.path.join(root, f".{variant}.lock")):
    if os.path.isdir(path):
      return path
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


def check_cache_dir(cfg) -> None:
  """Refuses a remote ``data.cache_dir``: the segment cache is a set of memory-mapped files that
  every reader thread slices at random (8 reads per example), so it must be on a local disk of
  each host; ``data.data_dir`` (the TFDS records, read sequentially once) may be remote."""
  cache_dir = cfg.get("cache_dir", "")
  if cache_dir and fileutil.is_url(cache_dir):
    raise ValueError(
        f"config.data.cache_dir={cache_dir!r}: the segment cache is memory-mapped and must be on a "
        "local disk of each host (e.g. /tmp/musdb18_cache or a local SSD); the TFDS data "
        "(config.data.data_dir) may be remote. Leave it empty for the default location.")


def training_cache(cfg, split: Optional[str] = None) -> segment_cache.SegmentCache:
  check_cache_dir(cfg)
  builder = prepare(cfg)
  return segment_cache.open_or_build(builder, split or cfg.train_split,
                                     cache_dir=cfg.get("cache_dir", ""))
