"""Writes a comparison's files into an output folder, atomically, never over earlier outputs
unless asked (``force``).

``table.txt`` (the console table), ``summary.csv`` (per source and run: medians, paired
statistics), ``tracks.csv`` (per source, track and run: the track's medians and its SDR
difference), ``comparison.json`` (everything, with the runs' paths and steps),
``per_track_sdr.png`` (per-track SDR, one panel per source; several seeds: their spread), with
runs of several seeds ``seeds.csv`` (every seed's medians), and with work directories
``curves.csv`` and ``learning_curves.png``.
"""
import json
import os
import time
from typing import List

from resunet_jax import fileutil
from resunet_jax.compare import plots
from resunet_jax.compare import runs as runs_lib
from resunet_jax.compare import scalars
from resunet_jax.compare import tables

OUTPUT_FILES = ("table.txt", "summary.csv", "tracks.csv", "comparison.json", "seeds.csv",
                "curves.csv", "per_track_sdr.png", "learning_curves.png")
CompareError = runs_lib.CompareError


def _write_text(path, text):
  with fileutil.atomic_text_file(path, newline="") as f:
    f.write(text)


def _write_figure(path, fig):
  tmp = fileutil.temp_file(path)
  try:
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def default_out_dir() -> str:
  return os.path.abspath(time.strftime("compare_%Y%m%d-%H%M%S"))


def check_out_dir(out_dir, force=False) -> List[str]:
  """The output files already in out_dir; an error when there are some and not ``force``."""
  if out_dir is None:
    return []
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise CompareError(f"--out {out_dir} exists and is not a directory")
  existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, f))]
  if existing and not force:
    raise CompareError(f"{out_dir} already holds {', '.join(existing)}; not overwriting "
                       "(use --force or another --out)")
  return existing


def write_outputs(c, out_dir=None, *, force=False, plot=True, curve_tags=None
                  ) -> List[str]:
  """Writes the files listed in the module docstring into out_dir; returns their paths.

  An existing output file is an error unless ``force`` (then the outputs of an earlier comparison
  that this one does not produce, e.g. learning_curves.png, are removed too). Files of other names
  in out_dir are left alone.
  """
  if out_dir is None:
    out_dir = base = default_out_dir()
    k = 1
    while os.path.exists(out_dir):
      k += 1
      out_dir = f"{base}_{k}"
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  curve_sets = [curves for _, _, curves, _ in c.curve_sets()]
  has_curves = bool(curve_sets) and bool(scalars.curve_tags(curve_sets, curve_tags))
  files = {"table.txt": c.format_table() + "\n", "summary.csv": tables.summary_csv(c),
           "tracks.csv": tables.tracks_csv(c),
           "comparison.json": json.dumps(c.to_dict(), indent=2, allow_nan=False) + "\n"}
  if c.multi_seed:
    files["seeds.csv"] = tables.seeds_csv(c)
  if curve_sets:
    files["curves.csv"] = tables.curves_csv(c)
  figures = (["per_track_sdr.png"] + (["learning_curves.png"] if has_curves else [])
             if plot else [])
  existing = check_out_dir(out_dir, force)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, text in files.items():
    _write_text(os.path.join(out_dir, name), text)
    written.append(os.path.join(out_dir, name))
  for name in figures:
    fig = (plots.plot_per_track(c) if name == "per_track_sdr.png"
           else plots.plot_curves(c, curve_tags))
    _write_figure(os.path.join(out_dir, name), fig)
    written.append(os.path.join(out_dir, name))
  for name in existing:  # stale outputs of an earlier comparison (force)
    path = os.path.join(out_dir, name)
    if path not in written:
      os.unlink(path)
  return written
