"""``resunet-compare`` / ``python -m resunet_jax.compare``: the command line of the comparison.

  python -m resunet_jax.compare RUN_OR_EVAL_DIR RUN_OR_EVAL_DIR [...] [--out DIR]
  resunet-compare /tmp/run_a /tmp/run_b --method=model --protocol=authors
"""
import argparse
import os
import sys

from resunet_jax import evaluation
from resunet_jax.compare import comparison
from resunet_jax.compare import outputs
from resunet_jax.compare import runs as runs_lib


def _parser():
  p = argparse.ArgumentParser(
      prog="python -m resunet_jax.compare",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Compare two or more evaluated runs (eval.py output) per source: median SDR/SIR/SAR, "
          "the median paired per-track SDR difference against the FIRST run with a bootstrap "
          "confidence interval, win/tie/loss counts; tables on the console and as CSV, plots as "
          "PNG (per-track SDR; learning curves from the TensorBoard scalars of work directories)."),
      epilog=(
          "A RUN is an eval.py output folder (--eval_dir), a training work directory (its\n"
          "evaluation <workdir>/eval/step_<n>/<split> of the NEWEST evaluated step n is used\n"
          "unless --step names one), or a model directory with eval/<split>.\n"
          "Scores: per track the median over 1 s windows, per run the median over tracks\n"
          "(SiSEC 2018, as eval.py). The CI is a percentile bootstrap of the median paired\n"
          "difference (scipy.stats.bootstrap: tracks resampled with replacement, numpy\n"
          "default_rng(seed)).\n"
          "Outputs go to --out: table.txt, summary.csv, tracks.csv, comparison.json,\n"
          "per_track_sdr.png, and with work directories curves.csv and learning_curves.png."))
  p.add_argument("runs", nargs="+", metavar="RUN_OR_EVAL_DIR",
                 help="evaluated runs; differences are taken against the first")
  p.add_argument("--method", default="model",
                 help="method to compare: model (default) or oracle_<kind>, e.g. oracle_irm")
  p.add_argument("--protocol", default="authors", choices=evaluation.PROTOCOLS,
                 help="museval protocol (default: authors)")
  p.add_argument("--split", default=None,
                 help="split (default: a run's only split, else test); all runs must agree")
  p.add_argument("--step", type=int, default=None,
                 help="for work directories: the evaluated step (default: the newest evaluated)")
  p.add_argument("--common_tracks", action="store_true",
                 help="compare only the tracks all runs scored (default: different track sets "
                      "are an error)")
  p.add_argument("--labels", default=None,
                 help="comma-separated run names (default: from the paths)")
  p.add_argument("--out", default=None,
                 help="output folder (default: a new ./compare_<date>-<time>)")
  p.add_argument("--force", action="store_true", help="overwrite outputs in --out")
  p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (10000)")
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
  p.add_argument("--confidence", type=float, default=0.95, help="CI level (0.95)")
  p.add_argument("--tie_tolerance", type=float, default=0.0,
                 help="|SDR difference| <= this (dB) counts as a tie (default 0)")
  p.add_argument("--curves", default=None,
                 help="comma-separated TensorBoard tags to plot (default: train/loss, val/sdr, "
                      "val/sdr_<source>)")
  p.add_argument("--no_plot", action="store_true", help="write no PNG")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # reading event files may import TF
  labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
  tags = [s.strip() for s in args.curves.split(",") if s.strip()] if args.curves else None
  try:
    outputs.check_out_dir(args.out, args.force)  # before any work
    c = comparison.compare_runs(
        args.runs, method=args.method, protocol=args.protocol, split=args.split,
        step=args.step, common_tracks=args.common_tracks, labels=labels,
        n_resamples=args.bootstrap, seed=args.seed, confidence=args.confidence,
        tie_tolerance=args.tie_tolerance)
    print(c.format_table())
    written = outputs.write_outputs(c, args.out, force=args.force, plot=not args.no_plot,
                                    curve_tags=tags)
  except runs_lib.CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"\nwrote {len(written)} files to {os.path.dirname(written[0])}: "
        + ", ".join(os.path.basename(w) for w in written))
  return 0

