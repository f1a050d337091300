"""The comparison as text: the console table (``table.txt``) and the CSV files.

``summary.csv``: per source and run, the medians and the paired statistics; ``tracks.csv``: per
source, track and run, the track's medians and its SDR difference to the first run;
``curves.csv``: the learning curves' points.
"""
import csv
import io

import numpy as np

from resunet_jax import evaluation

METRICS = evaluation.METRICS
TABLE_METRICS = ("SDR", "SIR", "SAR")


def fmt_value(x, fmt="{:.3f}"):
  return "nan" if x is None or not np.isfinite(x) else fmt.format(x)


def format_table(c) -> str:
  """Fixed-width tables, one per source."""
  pct = f"{100 * c.settings['confidence']:g}%"
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
  lines += [
      "SDR/SIR/SAR (dB): median over tracks of each track's median over 1 s windows (SiSEC 2018).",
      "dSDR: median over tracks of the paired difference d = SDR(run) - SDR([1]);",
      f"{pct} CI: percentile bootstrap ({c.settings['n_resamples']} resamples of the tracks, "
      f"seed {c.settings['seed']}); pairs: tracks with both SDRs finite;",
      f"W/T/L: tracks where the run beats / ties (|d| <= {c.settings['tie_tolerance_db']:g} dB) "
      "/ loses to [1]."]
  show_best = len(c.runs) > 2
  if show_best:
    lines.append("best: tracks where the run alone has the highest SDR of all runs.")
  for t in c.targets:
    head = ["run", "tracks"] + list(TABLE_METRICS) + ["dSDR", f"{pct} CI", "pairs", "W/T/L"]
    head += ["best"] if show_best else []
    rows = []
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [f"[{i + 1}] {r.label}"]
      if s is None:
        row += ["-"] * (len(TABLE_METRICS) + 1)
      else:
        row += [str(s["tracks"])] + [fmt_value(s[m]) for m in TABLE_METRICS]
      if p is None:
        row += ["", "", "", ""]
      else:
        row += [fmt_value(p["median_diff"], "{:+.3f}"),
                f"[{fmt_value(p['ci_low'], '{:+.3f}')}, {fmt_value(p['ci_high'], '{:+.3f}')}]",
                str(p["pairs"]), f"{p['wins']}/{p['ties']}/{p['losses']}"]
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
  header = (["target", "run", "label", "tracks"] + list(METRICS) + [
      "sdr_pairs", "sdr_median_diff", "sdr_diff_ci_low", "sdr_diff_ci_high", "wins", "ties",
      "losses", "best_tracks", "eval_dir", "step"])
  rows = []
  for t in c.targets:
    for i, r in enumerate(c.runs):
      s, p = c.summary[t][i], c.paired[t][i]
      row = [t, i + 1, r.label]
      row += ([""] * (1 + len(METRICS)) if s is None else
              [s["tracks"]] + [_num(s[m]) for m in METRICS])
      row += ([""] * 7 if p is None else
              [p["pairs"], _num(p["median_diff"]), _num(p["ci_low"]), _num(p["ci_high"]),
               p["wins"], p["ties"], p["losses"]])
      row += [c.best[t][i] if s is not None else "", r.eval_dir,
              "" if r.step is None else r.step]
      rows.append(row)
  return _csv_text(header, rows)


def tracks_csv(c) -> str:
  header = ["target", "track", "run", "label"] + list(METRICS) + ["sdr_minus_first"]
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
        rows.append([t, n, i + 1, r.label] + [_num(v[m]) for m in METRICS] + [_num(diff)])
  return _csv_text(header, rows)


def _shortest(v):
  """The shortest text that reads back as v: float32 values (TensorBoard's) as float32."""
  v = float(v)
  return str(np.float32(v)) if np.isfinite(v) and float(np.float32(v)) == v else repr(v)


def curves_csv(c) -> str:
  rows = [[i + 1, r.label, tag, int(s), _shortest(v)]
          for i, (r, cur) in enumerate(zip(c.runs, c.curves))
          for tag, (steps, values) in cur.items() for s, v in zip(steps, values)]
  return _csv_text(["run", "label", "tag", "step", "value"], rows)

