"""TFDS builder ``musdb18``: MUSDB18 (compressed stems) and MUSDB18-HQ (wav) from a manual directory.

One example per track: the five stems (mixture, drums, bass, other, vocals) as int16 stereo audio at
44.1 kHz stored as raw bytes (not up-cast to int64, not cut into segments), the track name and its
length in samples. Examples are written in track-name order (``disable_shuffling``), so
``split="test[:5]"`` are the first five test tracks by name.

Splits. ``train`` (86 tracks) and ``validation`` (the 14 tracks of musdb's official list) partition
the release's ``train/`` folder; ``test`` (50) is its ``test/`` folder. ``train_full`` (all 100
training tracks, what the authors trained on) is not stored a second time: it is the TFDS split
expression ``"train+validation"``; :func:`tfds_split` translates the name.

The builder works from whatever the manual directory holds: it builds the tracks that are there and
logs which of the official tracks are missing (the list of names is in ``info.metadata``).

Build (offline)::

  python -m resunet_jax.data.build --variant=hq --manual_dir=/data/musdb18hq [--data_dir=...]
  # or in Python: tfds.builder("musdb18/hq", data_dir=...).download_and_prepare(
  #     download_config=tfds.download.DownloadConfig(manual_dir="/data/musdb18hq"))
  # `tfds build musdb18/hq --imports=resunet_jax.data --manual_dir=...` relies on the same
  # registration by import; it could not be run here: the TFDS 4.9.10 CLI does not start without
  # apache-beam and mlcroissant.
"""
import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from resunet_jax import fileutil
from resunet_jax.data import stems_io
from resunet_jax.data import tracklists

_log = logging.getLogger(__name__)

_CITATION = r"""
@misc{musdb18,
  author = {Rafii, Zafar and Liutkus, Antoine and St{\"o}ter, Fabian-Robert and Mimilakis,
            Stylianos Ioannis and Bittner, Rachel},
  title = {The {MUSDB18} corpus for music separation},
  month = dec, year = 2017, doi = {10.5281/zenodo.1117372}, url = {https://doi.org/10.5281/zenodo.1117372}
}
"""

_DESCRIPTION = """
MUSDB18: 150 full-length music tracks (100 train, 50 test) with their isolated drums, bass, other and
vocals stems and the mixture, stereo 44.1 kHz. Config "stem" reads the compressed release
(.stem.mp4, AAC), config "hq" reads MUSDB18-HQ (uncompressed wav). Audio is stored as int16.
"""

# Splits stored by the builder, and the names :func:`tfds_split` understands on top of them.
STORED_SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train_full": ("train", "validation")}


class Musdb18Config(tfds.core.BuilderConfig):
  """``variant`` is the release format: "stem" (.stem.mp4 files) or "hq" (wav folders)."""

  def __init__(self, *, variant: str, **kwargs):
    super().__init__(**kwargs)
    self.variant = variant


def _audio_feature(doc: str) -> tfds.features.Tensor:
  # A Tensor rather than tfds.features.Audio: in TFDS 4.9 Audio.encode_example passes numpy arrays
  # through without applying Encoding.BYTES (serialization then fails), and Encoding.NONE would
  # up-cast int16 to int64 (4x the bytes). Sample rate: resunet_jax.sources.SAMPLE_RATE (44.1 kHz).
  return tfds.features.Tensor(shape=(None, stems_io.NUM_CHANNELS), dtype=np.int16,
                              encoding=tfds.features.Encoding.BYTES, doc=doc)


def find_tracks(manual_dir: str, variant: str) -> Dict[str, Dict[str, str]]:
  """{"train": {name: path}, "test": {name: path}} of the tracks present in a manual directory."""
  found = {"train": {}, "test": {}}
  for subset in found:
    folder = os.path.join(os.fspath(manual_dir), subset)
    if not os.path.isdir(folder):
      continue
    for entry in sorted(os.listdir(folder)):
      path = os.path.join(folder, entry)
      if variant == "stem":
        if entry.endswith(".stem.mp4") and os.path.isfile(path):
          found[subset][entry[:-len(".stem.mp4")]] = path
      elif variant == "hq":
        if os.path.isdir(path):
          found[subset][entry] = path
      else:
        raise ValueError(f"Unknown MUSDB18 variant {variant!r}; use 'stem' or 'hq'.")
  return found


def assign_splits(found: Dict[str, Dict[str, str]]) -> Dict[str, List[Tuple[str, str]]]:
  """Release folders → builder splits, each a name-sorted list of (name, path)."""
  validation = set(tracklists.validation_tracks())
  splits = {s: [] for s in STORED_SPLITS}
  for name, path in found["train"].items():
    splits["validation" if name in validation else "train"].append((name, path))
  splits["test"] = list(found["test"].items())
  return {s: sorted(items) for s, items in splits.items()}


def missing_report(found: Dict[str, Dict[str, str]]) -> Dict[str, List[str]]:
  """Official tracks absent from the manual dir, and names that are in the other folder."""
  report = {
      "missing_train": sorted(set(tracklists.TRAIN_TRACKS) - set(found["train"])),
      "missing_test": sorted(set(tracklists.TEST_TRACKS) - set(found["test"])),
      "misplaced": sorted([n for n in found["train"] if tracklists.official_subset(n) == "test"] +
                          [n for n in found["test"] if tracklists.official_subset(n) == "train"]),
      "unknown": sorted(n for s in found.values() for n in s if not tracklists.official_subset(n)),
  }
  return report


def _short_list(names: List[str], n: int = 8) -> str:
  head = ", ".join(repr(x) for x in names[:n])
  return head + (f", ... ({len(names) - n} more)" if len(names) > n else "")


class Musdb18(tfds.core.GeneratorBasedBuilder):
  """MUSDB18 / MUSDB18-HQ, one example per track, int16 stereo stems."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: stem and hq configs, int16 bytes, one example per track."}
  BUILDER_CONFIGS = [
      Musdb18Config(name="stem", variant="stem",
                    description="Compressed MUSDB18 (Zenodo 1117372): train/*.stem.mp4, test/*.stem.mp4."),
      Musdb18Config(name="hq", variant="hq",
                    description="MUSDB18-HQ (Zenodo 3338373): train/<track>/{mixture,...}.wav, same for test."),
  ]
  DEFAULT_CONFIG_NAME = "stem"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  MUSDB18 needs an access request on Zenodo; download and unzip it yourself, then pass the folder
  that contains `train/` and `test/` as the manual directory (`--manual_dir=...` or
  `tfds.download.DownloadConfig(manual_dir=...)`). Nothing is downloaded by the builder.

  Config "stem" (compressed MUSDB18, https://zenodo.org/records/1117372, musdb18.zip):
      <manual_dir>/train/<track name>.stem.mp4      100 files
      <manual_dir>/test/<track name>.stem.mp4       50 files
    each file with 5 stereo 44.1 kHz AAC streams in the order mixture, drums, bass, other, vocals.

  Config "hq" (MUSDB18-HQ, https://zenodo.org/records/3338373, musdb18hq.zip):
      <manual_dir>/train/<track name>/{mixture,drums,bass,other,vocals}.wav   100 folders
      <manual_dir>/test/<track name>/{mixture,drums,bass,other,vocals}.wav    50 folders
    16-bit stereo 44.1 kHz wav files.

  Track names are the release's own (e.g. "Al James - Schoolboy Facination"); do not rename. The
  validation split is the 14 training tracks of musdb's official list. A directory with only some
  tracks builds those and logs the missing ones.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"name": tfds.features.Text(doc="Track name, 'Artist - Title'."),
                "length": tfds.features.Scalar(dtype=np.int64, doc="Samples per channel.")}
    for stem in stems_io.STEM_NAMES:
      features[stem] = _audio_feature(f"{stem}, int16 (length, 2) at 44.1 kHz; float = int16 / 32768.")
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage="https://sigsep.github.io/datasets/musdb.html",
        citation=_CITATION,
        disable_shuffling=True,  # keep name order: split slices select tracks by name.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir  # raises with the instructions when absent or empty.
    variant = self.builder_config.variant
    found = find_tracks(manual_dir, variant)
    splits = assign_splits(found)
    if not any(splits.values()):
      layout = "*.stem.mp4 files" if variant == "stem" else "track folders of wav files"
      raise FileNotFoundError(
          f"No MUSDB18 tracks for config {variant!r} in {manual_dir}: expected {layout} under "
          f"train/ and test/.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    report = missing_report(found)
    n_train, n_test = len(found["train"]), len(found["test"])
    if report["missing_train"] or report["missing_test"]:
      _log.warning(
          "musdb18/%s: building %d train and %d test tracks from %s; %d of MUSDB18's %d train and "
          "%d of its %d test tracks are among them. Missing train: %s. Missing test: %s.", variant,
          n_train, n_test, manual_dir, tracklists.NUM_TRAIN - len(report["missing_train"]),
          tracklists.NUM_TRAIN, tracklists.NUM_TEST - len(report["missing_test"]),
          tracklists.NUM_TEST, _short_list(report["missing_train"]),
          _short_list(report["missing_test"]))
    if report["misplaced"]:
      _log.warning("musdb18: tracks in the other subset's folder than in the release: %s",
                   _short_list(report["misplaced"]))
    if report["unknown"]:
      _log.warning("musdb18: tracks that are not MUSDB18 names (kept): %s",
                   _short_list(report["unknown"]))
    # Recorded with the dataset so that users (and the pipeline) can see what a build contains.
    self.info.metadata.update({
        "variant": variant,
        "manual_dir": os.fspath(manual_dir),
        "tracks": {s: [n for n, _ in items] for s, items in splits.items()},
        **report,
    })
    empty = [s for s, items in splits.items() if not items]
    if empty:
      _log.warning("musdb18: no tracks for split(s) %s; they are not written.", empty)
    return {s: self._generate_examples(items, variant) for s, items in splits.items() if items}

  def _generate_examples(self, items: List[Tuple[str, str]], variant: str):
    for name, path in items:
      stems = stems_io.read_track(path, variant)
      length = next(iter(stems.values())).shape[0]
      yield name, {"name": name, "length": length, **stems}


def tfds_split(split: str, available=None) -> str:
  """A split name of this project → a TFDS split expression ("train_full" → "train+validation").

  ``available`` (the builder's ``info.splits``) drops parts that a partial build does not have.
  """
  base, sep, slice_ = split.partition("[")
  parts = SPLIT_ALIASES.get(base, (base,))
  if available is not None:
    present = [p for p in parts if p in available]
    if not present:
      raise ValueError(f"Split {base!r} has no tracks in this build (stored splits: "
                       f"{sorted(available)}); the manual directory had none of its tracks.")
    parts = present
  if sep and len(parts) > 1:
    raise ValueError(f"Slicing {split!r} is not supported; slice 'train' / 'validation' instead.")
  return "+".join(p + sep + slice_ for p in parts)


def split_tracks(builder, split: str) -> List[Tuple[str, str, int]]:
  """[(track name, stored split, index in it)] of ``split`` in reading order.

  ``split`` is a name of this project ("train_full") or any TFDS split expression over the stored
  splits, slices included: "train[:92]", "train[92:]", "train[:90%]", "test[3:5]+validation". So
  a set whose track names are not MUSDB18's (all of its train/ tracks land in "train") can still
  hold out training tracks for validation: ``data.train_split="train[:92]"``,
  ``data.validation_split="train[92:]"``.
  """
  tracks = (builder.info.metadata or {}).get("tracks") or {}
  spec = tfds_split(split, builder.info.splits)
  out = []
  for part in tfds.core.ReadInstruction.from_spec(spec).to_absolute(builder.info.splits):
    names = tracks.get(part.splitname, [])
    lo = part.from_ or 0
    hi = len(names) if part.to is None else part.to
    out += [(names[i], part.splitname, i) for i in range(lo, hi)]
  return out


def get_builder(variant: str = "stem", *, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """``tfds.builder("musdb18/<variant>")`` in ``data_dir`` ("" = TFDS default)."""
  return tfds.builder(f"musdb18/{variant}", data_dir=data_dir or None)


def build(variant: str, manual_dir: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """Prepares musdb18/<variant> from ``manual_dir`` (offline); no-op if already prepared."""
  from resunet_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tf()
  builder = get_builder(variant, data_dir=data_dir)
  # try_download_gcs=False: never look for a pre-built copy in TFDS's public bucket.
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False)
  if fileutil.is_url(builder.data_dir):  # object stores: no lock; one writer (see prepare.py)
    builder.download_and_prepare(download_config=config)
    return builder
  # Local data dirs: one build at a time, also between independent runs sharing the folder
  # (TFDS renames its incomplete.* folder at the end; two builders at once collide there).
  lock = os.path.join(os.path.dirname(os.path.dirname(os.fspath(builder.data_dir))),
                      f".{builder.builder_config.name}.build.lock")
  with fileutil.file_lock(lock):
    builder = get_builder(variant, data_dir=data_dir)  # sees a build finished meanwhile
    builder.download_and_prepare(download_config=config)
  return builder
