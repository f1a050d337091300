"""Compares evaluated runs: per-source tables, paired per-track statistics, plots, learning curves.

  python -m resunet_jax.compare RUN_OR_EVAL_DIR RUN_OR_EVAL_DIR [...] [--out DIR]
  resunet-compare /tmp/run_a /tmp/run_b --method=model --protocol=authors

From Python: ``compare_runs(paths, ...)`` returns a ``Comparison`` (``.summary``, ``.paired``,
``.per_track``, ``.curves``, ``.to_dict()``, ``.format_table()``); ``write_outputs(comparison,
out_dir)`` writes its files. One module per concern:

  runs        which evaluation folder a path stands for (eval dir, work dir, model dir), labels
  stats       the paired statistics: median difference, bootstrap interval, W/T/L, best
  scalars     the TensorBoard scalars of work directories (learning curves)
  comparison  ``compare_runs`` and ``Comparison``: checks, scores, statistics
  tables      the console table and the CSV files
  plots       the PNG figures
  outputs     writing the files (atomically, never over earlier outputs without ``force``)
  cli         the command line (``main``)
"""
from resunet_jax.compare.cli import main
from resunet_jax.compare.comparison import Comparison
from resunet_jax.compare.comparison import compare_runs
from resunet_jax.compare.outputs import OUTPUT_FILES
from resunet_jax.compare.outputs import check_out_dir
from resunet_jax.compare.outputs import default_out_dir
from resunet_jax.compare.outputs import write_outputs
from resunet_jax.compare.plots import plot_curves
from resunet_jax.compare.plots import plot_per_track
from resunet_jax.compare.runs import CompareError
from resunet_jax.compare.runs import Run
from resunet_jax.compare.runs import is_eval_dir
from resunet_jax.compare.runs import resolve_run
from resunet_jax.compare.scalars import DEFAULT_CURVES
from resunet_jax.compare.scalars import read_scalars
from resunet_jax.compare.stats import best_counts
from resunet_jax.compare.stats import bootstrap_median_ci
from resunet_jax.compare.stats import paired_stats
from resunet_jax.compare.tables import METRICS
from resunet_jax.compare.tables import TABLE_METRICS
from resunet_jax.compare.tables import curves_csv
from resunet_jax.compare.tables import format_table
from resunet_jax.compare.tables import summary_csv
from resunet_jax.compare.tables import tracks_csv
