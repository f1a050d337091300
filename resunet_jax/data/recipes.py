"""The data config (``config.data``) and its validated, hashable form: the sampling :class:`Recipe`.

``default_data_config()`` is the paper's recipe (REFERENCE §6.1-6.5); every training config starts
from it (``configs/default.py``). :func:`recipe_from_config` checks the sources, the augmentation
settings and the sample rate, and turns seconds into samples; it reads no data and needs no
TensorFlow.
"""
import dataclasses
from typing import Sequence, Tuple

import ml_collections
import numpy as np

from resunet_jax import sources


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
  c.sample_rate = sources.SAMPLE_RATE  # checked: resampling is not implemented.
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
  if int(cfg.sample_rate) != sources.SAMPLE_RATE:
    raise ValueError(f"MUSDB18 is {sources.SAMPLE_RATE} Hz; resampling is not implemented "
                     f"(data.sample_rate={cfg.sample_rate}).")
  inputs, targets = tuple(cfg.input_sources), tuple(cfg.target_sources)
  for s in inputs + targets:
    if s not in sources.SOURCE_STEMS:
      raise ValueError(f"Unknown source {s!r}; choose from {sorted(sources.SOURCE_STEMS)}.")
  if not inputs or not targets:
    raise ValueError("input_sources and target_sources must not be empty.")
  covered = [st for s in inputs for st in sources.SOURCE_STEMS[s]]
  if len(covered) != len(set(covered)):
    raise ValueError(f"input_sources {inputs} overlap (a stem would be counted twice).")
  units = []
  for i, s in enumerate(inputs):
    parts = sources.SOURCE_STEMS[s]
    stems = set(parts)
    split = any(0 < len(stems & set(sources.SOURCE_STEMS[t])) < len(stems) for t in targets)
    units += [(i, (st,)) for st in parts] if split else [(i, parts)]
  target_units = []
  for t in targets:
    want = set(sources.SOURCE_STEMS[t])
    chosen = tuple(u for u, (_, st) in enumerate(units) if set(st) <= want)
    if set(st for u in chosen for st in units[u][1]) != want:
      raise ValueError(f"Target {t!r} is not part of the mixture of input_sources {inputs}.")
    target_units.append(chosen)
  aug = cfg.augment
  segment = int(round(float(cfg.segment_seconds) * sources.SAMPLE_RATE))
  hop = int(round(float(cfg.get("start_hop_seconds", 0.1)) * sources.SAMPLE_RATE))
  if segment <= 0 or hop <= 0:
    raise ValueError("segment_seconds and start_hop_seconds must be positive.")
  return Recipe(
      segment_samples=segment, hop_samples=hop, inputs=inputs, targets=targets,
      mix_counts=_mix_counts(aug.mix_audio, inputs), remix=bool(aug.remix),
      swap_channels=bool(aug.swap_channels), flip_polarity=bool(aug.flip_polarity),
      gain_db=float(aug.gain_db), units=tuple(units), target_units=tuple(target_units))
