"""The comparison as figures (matplotlib's Agg backend, pyplot's global state untouched):
per-track SDR of every run, and the learning curves of the runs with TensorBoard scalars.

A run with several seeds is drawn as its seeds' mean per track (bar and marker), every seed's own
value (small dots) and their range (a vertical line), its dashed line the mean over seeds of their
medians; a group's members' learning curves are drawn in the group's colour.
"""
import numpy as np

from resunet_jax.compare import scalars
from resunet_jax.compare import tables


def _new_figure(width, height):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
  return fig


_MARKERS = "osD^v<>ph*"


def plot_per_track(c):
  """Per-track SDR of every run, one panel per source (a matplotlib Figure)."""
  n = len(c.tracks)
  runs = len(c.runs)
  fig = _new_figure(max(9.0, 0.32 * n * max(1.0, runs / 3) + 5.0), 3.2 * len(c.targets) + 1.4)
  axes = fig.subplots(len(c.targets), 1, squeeze=False, sharex=True)[:, 0]
  x = np.arange(n)
  width = 0.8 / runs
  colors = [f"C{i % 10}" for i in range(runs)]
  for ax, t in zip(axes, c.targets):
    for i, r in enumerate(c.runs):
      if c.summary[t][i] is None:
        continue
      y = c.per_track[t]["SDR"][i]
      offset = (i - (runs - 1) / 2) * width
      s = c.summary[t][i]
      median = tables.fmt_value(s["SDR"], "{:.2f}")
      if r.num_seeds > 1:
        label = (f"[{i + 1}] {r.label} ({r.num_seeds} seeds: median {median} "
                 f"\u00b1 {tables.fmt_value(s.get('SDR_seed_sd'), '{:.2f}')} sd)")
        per_seed = c.per_seed[t]["SDR"][i]  # (seeds, tracks)
        with np.errstate(invalid="ignore"):
          ax.vlines(x + offset, np.nanmin(per_seed, axis=0), np.nanmax(per_seed, axis=0),
                    color=colors[i], linewidth=1.0)
        ax.plot(np.broadcast_to(x + offset, per_seed.shape).ravel(), per_seed.ravel(), ".",
                color=colors[i], markersize=2.5, alpha=0.8)
      else:
        label = f"[{i + 1}] {r.label} (median {median})"
      ax.bar(x + offset, y, width * 0.9, color=colors[i], alpha=0.35, linewidth=0)
      ax.plot(x + offset, y, _MARKERS[i % len(_MARKERS)], color=colors[i], markersize=4,
              label=label)
      ax.axhline(s["SDR"], color=colors[i], linestyle="--", linewidth=0.8)
    what = ("\nseveral seeds: bar and marker their mean, dots each seed, line their range; "
            "dashed: the mean of the seeds' medians" if c.multi_seed else "")
    ax.set_title(f"{t}: per-track SDR (median over 1 s windows; dashed: median over tracks), "
                 f"{c.method}/{c.protocol}/{c.split}{what}", fontsize=9, loc="left")
    ax.set_ylabel("SDR (dB)")
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
  axes[-1].set_xticks(x)
  axes[-1].set_xticklabels([s if len(s) <= 32 else s[:30] + "..." for s in c.tracks],
                           rotation=90, fontsize=7)
  axes[-1].set_xlim(-0.6, n - 0.4)
  return fig


def plot_curves(c, tags=None):
  """Learning curves of the runs with TensorBoard scalars (a Figure), or None."""
  sets = c.curve_sets()
  tags = scalars.curve_tags([curves for _, _, curves, _ in sets], tags)
  if not tags:
    return None
  cols = min(3, len(tags))
  rows = -(-len(tags) // cols)
  fig = _new_figure(5.0 * cols, 3.4 * rows)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, tag in zip(axes, tags):
    positive = True
    labelled = set()
    for i, label, cur, step in sets:
      if tag not in cur:
        continue
      steps, values = cur[tag]
      member = "/" in label[len(c.runs[i].label):]  # a group's member: thinner, labelled once
      ax.plot(steps, values, color=f"C{i % 10}", marker="." if len(steps) < 30 else None,
              linewidth=0.9 if member else 1.5,
              label=None if i in labelled else f"[{i + 1}] {c.runs[i].label}")
      labelled.add(i)
      positive &= bool(np.all(values[np.isfinite(values)] > 0))
      if step is not None:
        ax.axvline(step, color=f"C{i % 10}", linestyle=":", linewidth=0.8)
    if "loss" in tag and positive:
      ax.set_yscale("log")
    ax.set_title(tag, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in axes[len(tags):]:
    ax.set_visible(False)
  fig.suptitle("learning curves (dotted: the evaluated step)", fontsize=10)
  return fig

