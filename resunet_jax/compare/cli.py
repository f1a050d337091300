"""``resunet-compare`` / ``python -m resunet_jax.compare``: the command line of the comparison.

  python -m resunet_jax.compare RUN_OR_EVAL_DIR RUN_OR_EVAL_DIR [...] [--out DIR]
  resunet-compare /tmp/run_a /tmp/run_b --method=model --protocol=authors
  resunet-compare --group base=runs/a_s0,runs/a_s1 --group new=runs/b_s0,runs/b_s1

A run whose folder holds ``replica_<k>`` folders (a replicated training run, an ``eval.py
--replica=all`` folder) is compared over its replicas as seeds; ``--group NAME=RUN,RUN,...`` makes
one run of seeds trained as separate runs. ``--import=MODULE`` (the flag of every program, see
``resunet_jax.cli.program``) imports user modules first; the comparison loads no model, so it
needs none, and the flag is there so that one command line's flags work for every tool.
"""
import argparse
import os
import sys

from resunet_jax import evaluation
from resunet_jax.cli import program
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
          "Seeds: a RUN holding replica_<k>/ folders (<workdir>/eval/step_<n>/replica_<k>/\n"
          "<split>, or an eval.py --replica=all folder D/replica_<k>/) is one run of several\n"
          "seeds; --group NAME=RUN,RUN,... groups seeds trained as separate runs. Such a run\n"
          "shows the mean and sd over seeds of the per-seed median, a track's SDR is its mean\n"
          "over seeds, and the CI is a two-level bootstrap: each run's seeds and the tracks\n"
          "(paired between runs) resampled with replacement: it covers seed and track variation.\n"
          "--import=MODULE is accepted as by every tool (the comparison itself loads no model).\n"
          "Outputs go to --out: table.txt, summary.csv, tracks.csv, comparison.json,\n"
          "per_track_sdr.png, with several seeds seeds.csv, and with work directories\n"
          "curves.csv and learning_curves.png."))
  p.add_argument("runs", nargs="*", metavar="RUN_OR_EVAL_DIR",
                 help="evaluated runs; differences are taken against the first")
  p.add_argument("--group", action="append", default=[], metavar="NAME=RUN,RUN,...",
                 help="one run made of the seeds of several runs (seeds trained as separate "
                      "runs), named NAME; repeatable; groups come after the positional runs, "
                      "in the order given")
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
                 help="comma-separated names of the positional runs (default: from the paths; "
                      "a group is named by its NAME)")
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
  program.add_import_argument(p)
  return p


def parse_group(text):
  """(name, [paths]) of a ``--group NAME=RUN,RUN,...`` value."""
  name, sep, rest = text.partition("=")
  paths = [s.strip() for s in rest.split(",") if s.strip()]
  if not sep or not name.strip() or not paths:
    raise runs_lib.CompareError(f"--group {text!r}: expected NAME=RUN[,RUN,...], e.g. "
                                "--group base=runs/base_s0,runs/base_s1")
  return name.strip(), paths


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    program.import_user_modules(args.user_modules)
  except program.UserModuleError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # reading event files may import TF
  labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
  tags = [s.strip() for s in args.curves.split(",") if s.strip()] if args.curves else None
  try:
    groups = [parse_group(g) for g in args.group]
    entries = list(args.runs) + [paths for _, paths in groups]
    if groups:
      if labels is not None and len(labels) != len(args.runs):
        raise runs_lib.CompareError(f"--labels names the {len(args.runs)} positional run(s) "
                                    f"(groups are named by --group NAME=...); got {len(labels)}")
      labels = (labels or [None] * len(args.runs)) + [name for name, _ in groups]
    outputs.check_out_dir(args.out, args.force)  # before any work
    c = comparison.compare_runs(
        entries, method=args.method, protocol=args.protocol, split=args.split,
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

