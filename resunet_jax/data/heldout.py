"""Held-out data, read as it is: whole evaluation tracks and a fixed set of validation segments.

:func:`eval_tracks` yields whole tracks of a split, as ``resunet_jax.evaluation`` scores them;
:func:`validation_segments` cuts the fixed segments the training loop validates on. Nothing is
augmented; the only draws are the seeded segment starts.
"""
import hashlib
import json
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from resunet_jax import fileutil
from resunet_jax import sources
from resunet_jax.data import musdb18
from resunet_jax.data import prepare
from resunet_jax.data import recipes
from resunet_jax.data import sampling
from resunet_jax.data import stems_io


def split_track_order(builder, split: str) -> List[Tuple[str, str, int]]:
  """[(name, stored split, index in it)] in reading order: each stored part in name order
  (``musdb18.split_tracks``; slices such as "train[92:]" select tracks by index)."""
  return musdb18.split_tracks(builder, split)


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
  stems = {s: stems_io.int16_to_float(ex[s]) for s in sources.STEMS}
  for name, parts in sources.SOURCE_STEMS.items():  # the sums, e.g. accompaniment
    if name not in stems:
      stems[name] = _sum_stems(stems, parts)
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
  builder = prepare.prepare(data_config)
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
           "sample_rate": sources.SAMPLE_RATE}


def validation_segments(data_config, *, split: Optional[str] = None, num_segments: int = 32,
                        seed: int = 0, min_target_rms: float = 1e-3,
                        store: bool = True) -> Dict[str, np.ndarray]:
  """``cut_validation_segments``, stored once: the first call cuts them and writes them next to
  the segment cache (``<cache root>/<config>/<version>/validation/<key>.npz``, atomically, under
  a file lock), later calls -- every restart, every process on the host -- read that file instead
  of re-reading whole tracks. The key covers everything the segments depend on (split and its
  tracks, count, seed, segment length, start grid, sources, RMS threshold)."""
  from resunet_jax.data import segment_cache  # pylint: disable=g-import-not-at-top
  if not store:
    return cut_validation_segments(data_config, split=split, num_segments=num_segments,
                                   seed=seed, min_target_rms=min_target_rms)
  prepare.check_cache_dir(data_config)
  recipe = recipes.recipe_from_config(data_config)
  builder = prepare.prepare(data_config)
  split = split or data_config.get("validation_split", "test")
  key = json.dumps({"split": split, "tracks": [o[0] for o in split_track_order(builder, split)],
                    "num_segments": int(num_segments), "seed": int(seed),
                    "min_target_rms": float(min_target_rms),
                    "segment": recipe.segment_samples, "hop": recipe.hop_samples,
                    "inputs": list(recipe.inputs), "targets": list(recipe.targets),
                    "format": 1}, sort_keys=True)
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  folder = os.path.join(os.path.dirname(segment_cache.cache_path(
      builder, split, data_config.get("cache_dir", ""))), "validation")
  path = os.path.join(folder, f"{split}-{digest}.npz")
  with fileutil.file_lock(path + ".lock"):
    if os.path.isfile(path):
      with np.load(path) as f:
        return {"mixture": f["mixture"], "targets": f["targets"], "names": list(f["names"]),
                "starts": f["starts"]}
    out = cut_validation_segments(data_config, split=split, num_segments=num_segments,
                                  seed=seed, min_target_rms=min_target_rms)
    tmp = fileutil.temp_file(path)
    try:
      with open(tmp, "wb") as f:
        np.savez(f, mixture=out["mixture"], targets=out["targets"],
                 names=np.asarray(out["names"]), starts=out["starts"], key=np.asarray(key))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  return out


def cut_validation_segments(data_config, *, split: Optional[str] = None, num_segments: int = 32,
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
  recipe = recipes.recipe_from_config(data_config)
  builder = prepare.prepare(data_config)
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
    n = int(sampling.num_starts(np.array([ex["length"]]), length, recipe.hop_samples)[0])
    for i in wanted[t]:
      rng = np.random.default_rng([int(seed), i])
      for _ in range(10):
        start = int(rng.integers(0, n)) * recipe.hop_samples
        cut = {s: stems_io.int16_to_float(_cut(ex[s], start, length)) for s in sources.STEMS}
        tgt = [_sum_stems(cut, sources.SOURCE_STEMS[s]) for s in recipe.targets]
        if all(np.sqrt(np.mean(np.square(x))) >= min_target_rms for x in tgt):
          break
      for s in recipe.inputs:
        mixture[i] += _sum_stems(cut, sources.SOURCE_STEMS[s])
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
