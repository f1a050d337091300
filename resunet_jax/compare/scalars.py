"""Learning curves: the TensorBoard scalars (clu's event files) of a training work directory."""
import glob
import os
import warnings
from typing import Dict

import numpy as np

DEFAULT_CURVES = ("train/loss", "val/sdr")  # plus every val/sdr_<source> found


def read_scalars(workdir, problems=None) -> Dict[str, tuple]:
  """{tag: (steps, values)} from the event files in ``workdir`` (clu's metric writers).

  TF2 / clu write scalars as tensors with the "scalars" plugin; TF1-style summaries use
  ``simple_value``: both are read. When several files (restarts) hold a step, the newest file wins.
  A file that cannot be read to its end gives the events before the damage; ``problems`` (a list)
  receives a message about it.
  """
  files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not files:
    return {}
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top
  # File names start with the creation time (events.out.tfevents.<seconds>.<host>...): sorted,
  # a restart's file comes after the earlier ones.
  series: Dict[str, Dict[int, float]] = {}
  for path in files:
    events = []
    try:
      for event in event_file_loader.LegacyEventFileLoader(path).Load():
        events.append(event)
    except Exception as e:  # pylint: disable=broad-except
      message = f"{path}: event file unreadable after {len(events)} events ({e})"
      warnings.warn(message)
      if problems is not None:
        problems.append(message)
    for event in events:
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          v = float(value.simple_value)
        elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
          try:
            a = tensor_util.make_ndarray(value.tensor)
          except Exception:  # pylint: disable=broad-except
            continue
          if a.size != 1 or a.dtype.kind not in "fiub":
            continue
          v = float(a.reshape(()))
        else:
          continue
        series.setdefault(value.tag, {})[int(event.step)] = v
  return {tag: (np.array(sorted(s), np.int64), np.array([s[k] for k in sorted(s)], np.float64))
          for tag, s in sorted(series.items())}


def curve_tags(curves, wanted):
  present = sorted({t for c in curves for t in c})
  if wanted is not None:
    return [t for t in wanted if t in present]
  extra = [t for t in present if t.startswith("val/sdr_")]
  return [t for t in DEFAULT_CURVES if t in present] + extra

