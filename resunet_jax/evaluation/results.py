"""Results files: per-track museval JSON, tracks.csv, the summaries and settings.json.

The layout under ``eval_dir`` is described in :mod:`resunet_jax.evaluation`. Every file is written
atomically (:mod:`resunet_jax.fileutil`), so an interrupted evaluation leaves only whole files.
``eval_dir`` may be a local folder or a gs:// URL (every path here goes through ``fileutil``).
"""
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from typing import Dict

import numpy as np

from resunet_jax import fileutil
from resunet_jax import sources
from resunet_jax.evaluation import scoring


def write_text(path, text):
  fileutil.write_text_atomic(path, text)


def _exists(path) -> bool:
  return fileutil.as_path(path).exists()


def _read_text(path) -> str:
  return fileutil.as_path(path).read_text()


def _is_dir(path) -> bool:
  return fileutil.as_path(path).is_dir()


def safe_name(name):
  return name.replace(os.sep, "_")


def track_json_path(eval_dir, method, protocol, split, name):
  return fileutil.join(eval_dir, method, protocol, split, safe_name(name) + ".json")


def read_track_medians(path) -> Dict[str, Dict[str, float]]:
  """{target: {metric: median over windows (NaN ignored)}} from a museval per-track JSON."""
  data = json.loads(_read_text(path))  # museval writes NaN as the bare token NaN, which json reads
  out = {}
  for target in data["targets"]:
    out[target["name"]] = {}
    for m in scoring.METRICS:
      values = np.array([np.nan if f["metrics"][m] is None else float(f["metrics"][m])
                         for f in target["frames"]], np.float64)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out[target["name"]][m] = float(np.nanmedian(values)) if len(values) else float("nan")
  return out


def aggregate(eval_dir, method, protocol, split, names) -> dict:
  """Per track medians and per target medians over tracks (of the tracks scored so far)."""
  per_track = {}
  for name in names:
    path = track_json_path(eval_dir, method, protocol, split, name)
    if _exists(path):
      per_track[name] = read_track_medians(path)
  targets = [t for t in sources.TARGETS if any(t in v for v in per_track.values())]
  summary = {}
  for t in targets:
    summary[t] = {"tracks": sum(t in v for v in per_track.values())}
    for m in scoring.METRICS:
      values = np.array([v[t][m] for v in per_track.values() if t in v])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary[t][m] = float(np.nanmedian(values))
  return {"tracks": per_track, "targets": summary}


def write_csv(path, header, rows):
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(header)
  writer.writerows(rows)
  write_text(path, text.getvalue())


def format_table(summary) -> str:
  """SDR medians: one row per target, one column per (method, protocol)."""
  columns = [(m, p) for m in summary for p in summary[m]]
  targets = [t for t in sources.TARGETS if any(t in summary[m][p]["targets"] for m, p in columns)]
  head = ["target"] + [f"{m}/{p}" for m, p in columns]
  rows = []
  for t in targets:
    row = [t]
    for m, p in columns:
      s = summary[m][p]["targets"].get(t)
      row.append(f"{s['SDR']:.3f} ({s['tracks']})" if s else "-")
    rows.append(row)
  four = [t for t in sources.STEMS if t in targets]
  if len(four) == 4:
    row = ["mean of 4"]
    for m, p in columns:
      vals = [summary[m][p]["targets"].get(t, {}).get("SDR", np.nan) for t in four]
      row.append(f"{np.mean(vals):.3f}")
    rows.append(row)
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
  title = "median SDR in dB (tracks): median over 1 s windows per track, median over tracks"
  return "\n".join([title] + lines)


def variables_fingerprint(variables) -> str:
  """sha1 over all leaves (paths, shapes, bytes): tells two checkpoints apart."""
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha1()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.shape, a.dtype)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def check_settings(eval_dir, common, per_method):
  """Records what eval_dir holds; a rerun must agree on the tracks and on each method it shares.

  ``common``: settings of the whole directory (data, windows); ``per_method``: {method: settings}.
  New methods are added to the record.
  """
  path = fileutil.join(eval_dir, "settings.json")
  normal = lambda x: json.loads(json.dumps(x))  # tuples -> lists, as read back
  common, per_method = normal(common), normal(per_method)
  record = {"common": common, "methods": {}}
  exists = _exists(path)
  if exists:
    record = json.loads(_read_text(path))
    problems = [] if record["common"] == common else [("settings", record["common"], common)]
    problems += [(m, record["methods"][m], v) for m, v in per_method.items()
                 if m in record["methods"] and record["methods"][m] != v]
    if problems:
      details = "; ".join(f"{what}: {old!r} then, {new!r} now" for what, old, new in problems)
      raise ValueError(f"{eval_dir} holds results of a different evaluation ({details}); use "
                       "another eval_dir (or delete it) to start over")
  if any(m not in record["methods"] for m in per_method) or not exists:
    record["methods"].update(per_method)
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def save_estimates(eval_dir, method, name, estimates):
  """Float wavs; to a URL through a local temporary file (one upload: a whole object)."""
  from resunet_jax import audio  # pylint: disable=g-import-not-at-top
  folder = fileutil.join(eval_dir, method, "estimates", safe_name(name))
  remote = fileutil.is_url(folder)
  local = tempfile.mkdtemp(prefix="estimates-") if remote else folder
  try:
    os.makedirs(local, exist_ok=True)
    for t, y in estimates.items():
      with audio.AtomicAudioWriter(os.path.join(local, t + ".wav"), sources.SAMPLE_RATE,
                                   y.shape[1], subtype="FLOAT", overwrite=True) as w:
        w.write(y)
        w.commit()
      if remote:
        target = fileutil.as_path(folder) / (t + ".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        fileutil.as_path(os.path.join(local, t + ".wav")).copy(target, overwrite=True)
  finally:
    if remote:
      shutil.rmtree(local, ignore_errors=True)


def scored_methods(eval_dir, split):
  """{method: [protocols]} with per-track files for ``split`` in eval_dir (this run's or earlier)."""
  found = {}
  for method in sorted(p.name for p in fileutil.as_path(eval_dir).iterdir()):
    if method != "model" and not method.startswith("oracle_"):
      continue
    protocols = [p for p in scoring.PROTOCOLS
                 if _is_dir(fileutil.join(eval_dir, method, p, split))]
    if protocols:
      found[method] = protocols
  return found


def write_summary(eval_dir, split, names, log=print) -> dict:
  """Summaries (CSV, JSON, printed table) of every method and protocol scored in eval_dir."""
  summary, rows = {}, []
  methods = scored_methods(eval_dir, split)
  for method, protocols in methods.items():
    summary[method] = {}
    for protocol in protocols:
      agg = aggregate(eval_dir, method, protocol, split, names)
      summary[method][protocol] = agg
      write_csv(fileutil.join(eval_dir, method, protocol, "tracks.csv"),
                 ["track", "target"] + list(scoring.METRICS),
                 [[n, t] + [f"{v[m]:.5f}" for m in scoring.METRICS]
                  for n, by_t in agg["tracks"].items() for t, v in by_t.items()])
      for t, v in agg["targets"].items():
        rows.append([method, protocol, t, v["tracks"]] + [f"{v[m]:.5f}" for m in scoring.METRICS])
  write_csv(fileutil.join(eval_dir, "summary.csv"),
             ["method", "protocol", "target", "tracks"] + list(scoring.METRICS), rows)
  out = {m: {p: summary[m][p]["targets"] for p in summary[m]} for m in summary}
  stats_dir = fileutil.join(eval_dir, "oracle_stats", split)
  if any(m.startswith("oracle_") for m in methods) and _is_dir(stats_dir):
    fractions = {}
    for n in names:
      path = fileutil.join(stats_dir, safe_name(n) + ".json")
      if _exists(path):
        for t, v in json.loads(_read_text(path))["irm_above_one"].items():
          fractions.setdefault(t, []).append(v)
    out["irm_above_one_mean_over_tracks"] = {t: float(np.mean(v)) for t, v in fractions.items()}
  write_text(fileutil.join(eval_dir, "summary.json"),
                json.dumps(out, indent=2, sort_keys=True, allow_nan=True) + "\n")
  if log:
    log(format_table(summary))
    if "irm_above_one_mean_over_tracks" in out:
      log("fraction of STFT bins (2048/441) with |S| > |X| (IRM > 1), mean over tracks: " +
          ", ".join(f"{t} {v:.3f}" for t, v in out["irm_above_one_mean_over_tracks"].items()))
  return out
