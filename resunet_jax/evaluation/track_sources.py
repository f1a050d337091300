"""Track sources: what :func:`resunet_jax.evaluation.evaluate` reads the tracks from.

A track source has ``split``, ``names()`` (every track, in order), ``tracks(names)`` (an iterator of
track dicts in the format of ``resunet_jax.data.heldout.eval_tracks``: {"name", "mixture" (L, C),
"stems" {source: (L, C)}, "sample_rate"}) and ``describe()`` (JSON-able, recorded in settings.json).
"""
from typing import Iterable, Iterator, List


class MusdbTracks:
  """Whole tracks of a MUSDB18 split through the data pipeline (``resunet_jax.data.heldout``)."""

  def __init__(self, data_config, split=None, num_tracks=None, track_names=None):
    if data_config.get("name", "musdb18") != "musdb18":
      raise ValueError(f"evaluation reads MUSDB18 tracks; data.name is {data_config.name!r}")
    self.config = data_config
    self.split = split or data_config.eval_split
    self.num_tracks = num_tracks
    self.track_names = list(track_names) if track_names else None

  def names(self) -> List[str]:
    from resunet_jax.data import heldout  # pylint: disable=g-import-not-at-top
    from resunet_jax.data import prepare  # pylint: disable=g-import-not-at-top
    order = [n for n, _, _ in heldout.split_track_order(prepare.prepare(self.config), self.split)]
    if self.track_names is not None:
      unknown = [n for n in self.track_names if n not in order]
      if unknown:
        raise KeyError(f"tracks {unknown} are not in split {self.split!r}")
      order = list(self.track_names)
    return order[:self.num_tracks] if self.num_tracks is not None else order

  def tracks(self, names) -> Iterator[dict]:
    from resunet_jax.data import heldout  # pylint: disable=g-import-not-at-top
    if not names:
      return iter(())
    return heldout.eval_tracks(self.config, self.split, track_names=list(names))

  def describe(self):
    from resunet_jax.data import prepare  # pylint: disable=g-import-not-at-top
    variant, manual_dir, _ = prepare.resolve_dirs(self.config)
    return {"dataset": "musdb18", "variant": variant, "manual_dir": manual_dir,
            "split": self.split}


class InMemoryTracks:
  """Tracks given as dicts (the ``heldout.eval_tracks`` format); for tests and notebooks."""

  def __init__(self, tracks: Iterable[dict], split="test"):
    self._tracks = {t["name"]: t for t in tracks}
    self.split = split

  def names(self):
    return list(self._tracks)

  def tracks(self, names):
    return (self._tracks[n] for n in names)

  def describe(self):
    return {"dataset": "in_memory", "split": self.split, "tracks": self.names()}
