"""Evaluates a checkpoint (or ideal masks) on a MUSDB18 split with museval, SiSEC 2018 style.

``python eval.py`` and ``resunet-eval`` run this program (same flags):

  # a training run: its config gives the data; the workdir its latest checkpoint
  python eval.py --config=configs/default.py --workdir=/tmp/run
  # a model directory (e.g. a converted bytesep checkpoint) on the real MUSDB18 test set
  python eval.py --checkpoint=models/vocals --manual_dir=/data/musdb18 --residual \
      --protocols=authors,sisec_joint
  # ideal-mask upper bounds
  python eval.py --oracle=irm,irm_unbounded,cirm --manual_dir=/data/musdb18 --eval_dir=/tmp/oracle

Results go to --eval_dir (default <checkpoint>/eval/<split>, or <workdir>/eval/step_<n>/<split>):
museval per-track JSON files, tracks.csv, summary.csv/json and a printed table; a rerun resumes.
A model with a mask or backbone of one's own needs ``--import=MODULE`` (the module registering it;
the error of a run without it names the module). A replicated training run (config.replicas > 1)
needs --replica=k or --replica=all; replica k's results go to
<workdir>/eval/step_<n>/replica_<k>/<split> (or <eval_dir>/replica_<k>):

  python eval.py --config=configs/small.py --workdir=/tmp/run_r4 --replica=all

See ``resunet_jax.evaluation`` for the protocols and the file layout.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resunet_jax import backends
from resunet_jax.cli import program

config_flags.DEFINE_config_file("config", None, "training config; its .data selects the data",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "training work directory to evaluate")
flags.DEFINE_string("checkpoint", None, "model directory (python -m resunet_jax.convert) to evaluate")
flags.DEFINE_string("eval_dir", None, "output folder (default <checkpoint>/eval/<split>)")
flags.DEFINE_string("replica", None,
                    "replicated training runs (config.replicas > 1): the replica k to score, or "
                    "'all' (each into its own folder: <workdir>/eval/step_<n>/replica_<k>/<split>, "
                    "or <eval_dir>/replica_<k>)")
flags.DEFINE_string("split", None, "split (default: data.eval_split, i.e. test)")
flags.DEFINE_integer("num_tracks", None, "only the first N tracks of the split")
flags.DEFINE_list("tracks", None, "only these tracks (names)")
flags.DEFINE_list("protocols", ["authors"],
                  "authors (each target scored alone, as bytesep) and/or sisec_joint (museval's "
                  "eval_mus_track grouping: the four stems together, vocals with accompaniment)")
flags.DEFINE_list("oracle", [], "ideal masks to score: irm, irm_unbounded, cirm_bounded, cirm, "
                  "or all")
flags.DEFINE_list("oracle_targets", ["vocals", "accompaniment", "drums", "bass", "other"],
                  "targets of the oracle masks")
flags.DEFINE_bool("residual", False,
                  "also score mixture minus the estimates (accompaniment of a vocals model)")
flags.DEFINE_enum("scheme", "authors", ["authors", "crossfade"],
                  "chunking: authors (30 s chunks, 15 s hop, central halves) or crossfade")
flags.DEFINE_float("chunk_seconds", 30.0, "chunk length")
flags.DEFINE_float("overlap_seconds", 10.0, "cross-fade length (crossfade scheme)")
flags.DEFINE_integer("batch_size", 1, "chunks per model call")
flags.DEFINE_integer("workers", None, "scoring processes (default: CPU count; 0: in-process)")
flags.DEFINE_bool("save_estimates", False, "also write the estimates as float wavs")
flags.DEFINE_enum("conv_backend", "auto", ["auto", "xla", "cpu"],
                  "convolution backend (resunet_jax.backends): auto (cpu on CPU hosts, else xla), "
                  "xla, or cpu")
flags.DEFINE_string("manual_dir", None, "MUSDB18 folder with train/ and test/ (data.manual_dir)")
flags.DEFINE_string("data_dir", None, "TFDS data dir (data.data_dir)")
flags.DEFINE_enum("variant", None, ["stem", "hq"], "stem (.stem.mp4, the paper's) or hq (wav)")
program.define_import_flag()  # --import=MODULE: the modules that register a model's mask/backbone
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.workdir and FLAGS.checkpoint:
    raise app.UsageError("give --workdir or --checkpoint, not both")
  from resunet_jax import fileutil  # pylint: disable=g-import-not-at-top
  for flag in ("workdir", "checkpoint", "eval_dir", "data_dir"):  # local paths or gs:// URLs
    try:
      fileutil.check_location(getattr(FLAGS, flag), "--" + flag)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  logging.set_verbosity(logging.WARNING)  # TFDS logs every split it opens at INFO
  from resunet_jax import evaluation  # pylint: disable=g-import-not-at-top
  from resunet_jax import masks  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top
  data = recipes.default_data_config()
  if FLAGS.config is not None:
    data = FLAGS.config.data
  for key in ("manual_dir", "data_dir", "variant"):
    if getattr(FLAGS, key) is not None:
      data[key] = getattr(FLAGS, key)
  oracles = list(masks.ORACLES) if FLAGS.oracle == ["all"] else FLAGS.oracle
  checkpoint_path = FLAGS.checkpoint or FLAGS.workdir
  replicas = _replicas(checkpoint_path)
  for replica in replicas:
    _evaluate(evaluation, checkpoint_path, data, oracles, replica)


def _replicas(checkpoint_path):
  """The replicas --replica asks for ([None]: the checkpoint's one model), checked against the
  number the checkpoint holds before anything is evaluated."""
  if FLAGS.replica is not None and not checkpoint_path:
    raise app.UsageError("--replica needs --workdir (or --checkpoint) of a training run")
  if not checkpoint_path:
    return [None]
  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from resunet_jax import fileutil  # pylint: disable=g-import-not-at-top
  if not fileutil.as_path(checkpoint_path).exists():
    return [None] if FLAGS.replica is None else [FLAGS.replica]  # load_model names the problem
  count = checkpoint.replica_count(checkpoint_path)
  if FLAGS.replica is None:
    if count > 1:
      raise app.UsageError(f"{checkpoint_path} holds {count} replicas (config.replicas): pass "
                           f"--replica=k (0 <= k <= {count - 1}) or --replica=all")
    return [None]
  if FLAGS.replica == "all":
    return list(range(count)) if count > 1 else [None]
  try:
    k = int(FLAGS.replica)
  except ValueError:
    raise app.UsageError(f"--replica={FLAGS.replica}: expected an integer k or 'all'") from None
  if not 0 <= k < count:
    raise app.UsageError(f"--replica={k} is out of range: {checkpoint_path} holds {count} "
                         f"replica(s), valid: 0..{count - 1}")
  return [k] if count > 1 else [None]


def _evaluate(evaluation, checkpoint_path, data, oracles, replica):
  evaluation.evaluate_checkpoint(
      checkpoint_path, data, eval_dir=FLAGS.eval_dir, split=FLAGS.split, replica=replica,
      num_tracks=FLAGS.num_tracks, track_names=FLAGS.tracks, protocols=FLAGS.protocols,
      oracles=oracles, oracle_targets=FLAGS.oracle_targets, residual=FLAGS.residual,
      scheme=FLAGS.scheme, chunk_seconds=FLAGS.chunk_seconds,
      overlap_seconds=FLAGS.overlap_seconds, batch_size=FLAGS.batch_size, workers=FLAGS.workers,
      save_estimates=FLAGS.save_estimates,
      conv_backend=backends.resolve(FLAGS.conv_backend))


def run():
  """``resunet-eval`` and ``eval.py``."""
  program.run(main, __name__, __doc__)
