"""Audio files for separation: input checks from the header, output paths, folders of inputs.

Outputs go to ``<out_dir>/<song>/<source><ext>``, ``<song>`` being the input's name without its
extension (``.stem.mp4`` counts as one).
"""
import os
from typing import List, Sequence

from resunet_jax import audio
from resunet_jax import sources


class Counter:
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
    frames = audio.resampled_length(info.frames, info.sample_rate, sources.SAMPLE_RATE)
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
