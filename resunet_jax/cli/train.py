r"""Trains a separator: ``python train.py --config=configs/<name>.py --workdir=DIR``.

Everything the run depends on is in the config (written to DIR/config.json); override any key from
the command line, e.g. ``--config.optimizer.learning_rate=3e-4`` (an unknown key or a value of the
wrong type stops before anything starts, naming the key). Starting again with the same
``--workdir`` resumes from its latest checkpoint; SIGTERM saves a checkpoint and exits.
A resume that changes the training recipe stops with the differences unless
``--accept_config_changes``. After a preemption notice (SIGTERM) the run saves a checkpoint and exits
with code 143 (128 + SIGTERM), so that schedulers restart it; it exits 0 when ``num_train_steps`` is
reached and 1 on an error. ``--init_from`` fine-tunes a converted bytesep checkpoint (``python -m resunet_jax.convert IN.pth
OUT_DIR``) or another run's work directory. Multi-process (TPU pods, SLURM, several processes on one
machine): see ``resunet_jax.training.distributed``; ``--distributed`` forces it on or off.
``--import=MODULE`` (repeatable; a module name or a .py path) imports a module of one's own first,
so that ``--config.model.mask=<name>`` finds a mask it registers (``resunet_jax.cli.program``).

``python train.py`` and ``resunet-train`` run this program (same flags):

  python train.py --config=configs/small.py --workdir=/tmp/resunet_small
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resunet_jax.cli import program

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, TensorBoard metrics and "
                    "config.json. An existing one is resumed.")
flags.DEFINE_string("init_from", None, "Model directory (resunet_jax.convert output) or training "
                    "work directory whose weights start a new run (fine-tuning).")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: only when the "
                  "environment describes a multi-process job).")
flags.DEFINE_bool("accept_config_changes", False, "Resume even though the config changes the "
                  "training recipe (batch, optimiser, schedule, model, data recipe); the changes "
                  "are logged and recorded in WORKDIR/config_history.")
program.define_import_flag()  # --import=MODULE: user masks/backbones, imported before main
flags.mark_flags_as_required(["config", "workdir"])


def _prog():
  """The program's name in messages: train.py, or resunet-train."""
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train.py"


def parse_flags(argv):
  return program.parse_flags_with_config(argv, _prog())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from resunet_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import distributed  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  if FLAGS.log_dir:
    # Every log line (Orbax's INFO messages included) into a file per process in --log_dir
    # (absl's flag; a local folder), and still to the console.
    os.makedirs(FLAGS.log_dir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("resunet_train", FLAGS.log_dir)
    logging.set_stderrthreshold("info")
  distributed.maybe_initialize(FLAGS.distributed)
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, init_from=FLAGS.init_from,
                            accept_config_changes=FLAGS.accept_config_changes)
  except loop.Preempted as e:
    logging.warning("%s", e)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  except (ValueError, FileNotFoundError, NotADirectoryError, loop.NonFiniteLossError,
          distributed.HostsDisagreeError, checkpointing.NoRestorableCheckpointError) as e:
    logging.error("%s", e)
    print(f"{_prog()}: error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  """``resunet-train`` and ``train.py``."""
  program.run(main, __name__, __doc__, flags_parser=parse_flags)
