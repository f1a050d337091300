"""The comparison as text: the console table (``table.txt``) and the CSV files.

``summary.csv``: per source and run, the medians and the paired statistics; ``tracks.csv``: per
source, track and run, the track's medians and its SDR difference to the first run;
``curves.csv``: the learning curves' points. When a run has several seeds (``c.multi_seed``) the
table gains the columns ``seeds`` and ``sd`` (of SDR over seeds) and says how the interval was
made; ``summary.csv`` gains ``seeds``, ``<metric>_seed_sd`` and ``ci_method``; ``tracks.csv``
gains ``seeds`` and ``SDR_seed_sd`` (a track's SDR spread over seeds); ``seeds.csv`` lists every
seed's medians. A comparison of one-seed runs writes the files as before seeds existed.
"""
import csv
import io

import numpy as np

from resunet_jax import evaluation
from resunet_jax.compare import stats

METRICS = evaluation.METRICS
TABLE_METRICS = ("SDR", "SIR", "SAR")


def fmt_value(x, fmt="{:.3f}"):
  return "nan" if x is None or not np.isfinite(x) else fmt.format(x)


def format_table(c) -> str:
  """Fixed-width tables, one per source."""
  pct = f"{100 * c.settings['confidence']:g}%"
  seeds = c.multi_seed
  lines = [f"Comparing {len(c.runs)} runs: method {c.method}, protocol {c.protocol}, split "
           f"{c.split}, {len(c.tracks)} tracks"]
  for i, r in enumerate(c.runs):
    lines.append(f"  [{i + 1}] {r.label}: {r.describe()}")
  for label, gone in c.dropped.items():
    if gone:
      lines.append(f"  --common_tracks: {len(gone)} track(s) of {label} left out: "
                   + ", ".join(gone))
  if c.dropped:
    lines.append(f"  --common_tracks: {sum(map(len, c.dropped.values()))} track score(s) "
                 f"dropped in all; {len(c.tracks)} tracks compared")
  for note in c.warnings:
    lines.append(f"  note: {note}")
  if not seeds:
    lines += [
        "SDR/SIR/SAR (dB): median over tracks of each track's median over 1 s windows (SiSEC "
        "2018).",
        "dSDR: median over tracks of the paired difference d = SDR(run) - SDR([1]);",
        f"{pct} CI: percentile bootstrap ({c.settings['n_resamples']} resamples of the tracks, "
        f"seed {c.settings['seed']}); pairs: tracks with both SDRs finite;"]
  else:
    lines += [
        "SDR/SIR/SAR (dB): per seed the median over tracks of each track's median over 1 s "
        "windows (SiSEC",
        "  2018); a run of several seeds shows their mean, sd: their standard deviation (ddof 1).",
        "dSDR: median over tracks of the paired difference d = SDR(run) - SDR([1]), a track's SDR "
        "being its",
        "  mean over the run's seeds; pairs: tracks with every seed's SDR finite;",
        f"{pct} CI: two-level percentile bootstrap ({c.settings['n_resamples']} resamples, seed "
        f"{c.settings['seed']}): each run's seeds and the tracks",
        "  (the same for both runs) drawn with replacement, seed deviations scaled by "
        "sqrt(R/(R-1)); it",
        "  covers seed and track variation (*: one seed on both sides, the tracks only);"]
  lines.append(f"W/T/L: tracks where the run beats / ties (|d| <= "
               f"{c.settings['tie_tolerance_db']:g} dB) / loses to [1].")
  show_best = len(c.runs) > 2
  if show_best:
    lines.append("best: tracks where the run alone has the highest SDR of all runs.")
  for t in c.targets:
    metrics = list(TABLE_METRICS)
    head = ["run"] + (["seeds"] if seeds else []) + ["tracks"]
    head += (metrics[:1] + ["sd"] + metrics[1:]) if seeds else metrics
    head += ["dSDR", f"{pct} CI", "pairs", "W/T/L"] + (["best"] if show_best else [])
    rows = []
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [f"[{i + 1}] {r.label}"] + ([str(r.num_seeds)] if seeds else [])
      if s is None:
        row += ["-"] * (len(metrics) + 1 + int(seeds))
      else:
        values = [fmt_value(s[m]) for m in metrics]
        if seeds:
          values.insert(1, fmt_value(s.get("SDR_seed_sd")) if r.num_seeds > 1 else "")
        row += [str(s["tracks"])] + values
      if p is None:
        row += ["", "", "", ""]
      else:
        star = "*" if seeds and p.get("ci_method") == stats.TRACKS else ""
        row += [fmt_value(p["median_diff"], "{:+.3f}"),
                f"[{fmt_value(p['ci_low'], '{:+.3f}')}, {fmt_value(p['ci_high'], '{:+.3f}')}]"
                + star, str(p["pairs"]), f"{p['wins']}/{p['ties']}/{p['losses']}"]
      if show_best:
        row.append(str(c.best[t][i]) if s is not None else "")
      rows.append(row)
    right = set(range(1, len(head)))
    widths = [max(len(x[k]) for x in [head] + rows) for k in range(len(head))]
    fmt = lambda x: "  ".join((v.rjust(w) if k in right else v.ljust(w))
                              for k, (v, w) in enumerate(zip(x, widths))).rstrip()
    lines += ["", t, fmt(head)] + [fmt(x) for x in rows]
  return "\n".join(lines)


def _csv_text(header, rows):
  buf = io.StringIO(newline="")
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buf.getvalue()


def _num(x):
  return "" if x is None or not np.isfinite(x) else f"{x:.5f}"


def summary_csv(c) -> str:
  seeds = c.multi_seed
  header = (["target", "run", "label"] + (["seeds"] if seeds else []) + ["tracks"]
            + list(METRICS) + ([f"{m}_seed_sd" for m in METRICS] if seeds else []) + [
                "sdr_pairs", "sdr_median_diff", "sdr_diff_ci_low", "sdr_diff_ci_high", "wins",
                "ties", "losses"] + (["ci_method"] if seeds else [])
            + ["best_tracks", "eval_dir", "step"])
  rows = []
  for t in c.targets:
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [t, i + 1, r.label] + ([r.num_seeds] if seeds else [])
      row += ([""] * (1 + len(METRICS)) if s is None else
              [s["tracks"]] + [_num(s[m]) for m in METRICS])
      if seeds:
        row += [""] * len(METRICS) if s is None else [_num(s.get(f"{m}_seed_sd"))
                                                      for m in METRICS]
      row += ([""] * 7 if p is None else
              [p["pairs"], _num(p["median_diff"]), _num(p["ci_low"]), _num(p["ci_high"]),
               p["wins"], p["ties"], p["losses"]])
      if seeds:
        row.append("" if p is None else p["ci_method"])
      row += [c.best[t][i] if s is not None else "", r.eval_dir,
              "" if r.step is None else r.step]
      rows.append(row)
  return _csv_text(header, rows)


def tracks_csv(c) -> str:
  seeds = c.multi_seed
  header = (["target", "track", "run", "label"] + (["seeds"] if seeds else []) + list(METRICS)
            + (["SDR_seed_sd"] if seeds else []) + ["sdr_minus_first"])
  rows = []
  for t in c.targets:
    if c.summary[t][0] is None:
      first = np.full(len(c.tracks), np.nan)
    else:
      first = c.per_track[t]["SDR"][0]
    for j, n in enumerate(c.tracks):
      for i, r in enumerate(c.runs):
        if c.summary[t][i] is None:
          continue
        v = {m: c.per_track[t][m][i, j] for m in METRICS}
        diff = v["SDR"] - first[j] if i > 0 else np.nan
        row = [t, n, i + 1, r.label] + ([r.num_seeds] if seeds else [])
        row += [_num(v[m]) for m in METRICS]
        if seeds:
          row.append(_num(stats.seed_spread(c.per_seed[t]["SDR"][i][:, j])["sd"]))
        rows.append(row + [_num(diff)])
  return _csv_text(header, rows)


def seeds_csv(c) -> str:
  """Per source, run and seed: the seed's medians over tracks (several-seed comparisons)."""
  header = ["target", "run", "label", "seed", "tracks"] + list(METRICS) + ["eval_dir", "step"]
  rows = []
  for t in c.targets:
    for i, r in enumerate(c.runs):
      if c.seed_summary[t][i] is None:
        continue
      for s, summary in zip(r.seeds, c.seed_summary[t][i]):
        rows.append([t, i + 1, r.label, s.name, summary["tracks"]]
                    + [_num(summary[m]) for m in METRICS]
                    + [s.eval_dir, "" if s.step is None else s.step])
  return _csv_text(header, rows)


def _shortest(v):
  """The shortest text that reads back as v: float32 values (TensorBoard's) as float32."""
  v = float(v)
  return str(np.float32(v)) if np.isfinite(v) and float(np.float32(v)) == v else repr(v)


def curves_csv(c) -> str:
  """run, label, tag, step, value; a group's members' curves are labelled ``<label>/<member>``."""
  rows = [[i + 1, label, tag, int(s), _shortest(v)]
          for i, label, curves, _ in c.curve_sets()
          for tag, (steps, values) in curves.items() for s, v in zip(steps, values)]
  return _csv_text(["run", "label", "tag", "step", "value"], rows)
