r"""Cross-compiles train.py's step for a TPU slice (or an attached GPU/TPU): memory, FLOPs, bytes.

``python -m resunet_jax.aot`` and ``resunet-aot`` run this program (see ``resunet_jax.aot``):

  resunet-aot --config=configs/resunet143_ismir2021_pod.py --topology=v5e:8x8
  resunet-aot --config=configs/small.py --topology=v6e:1x1 --step=eval --json=/tmp/small.json
  resunet-aot --config=configs/default.py --config.model.remat=unit --topology=v5e:1x1 --search
  resunet-aot --config=configs/default.py --topology=attached --run        # on a GPU/TPU host

Topologies: ``v5e:AxB``, ``v6e:AxB``, ``v4:AxBxC``, ``v5p:AxBxC`` (chips per dimension; 1x1 is one
chip), or ``attached``. Exit status: 0 the step fits, 3 it does not (the message names the largest
per-chip batch that does), 2 bad flags, config or topology, 1 another compile failure.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from resunet_jax import aot
from resunet_jax.cli import program

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x2, v5e:8x8, v6e:1x1, v4:2x2x1, "
                    "v5p:2x2x1, or 'attached' (the GPU/TPU devices of this host)")
flags.DEFINE_enum("step", "train", list(aot.STEPS), "train: train.py's update; eval: its "
                  "validation step; separate: the separation tool's forward pass (one chip)")
flags.DEFINE_string("json", None, "also write the report as JSON to this file (or gs:// URL)")
flags.DEFINE_bool("search", False, "find the largest per-chip batch that fits (by compiling) "
                  "also when the config's batch fits")
flags.DEFINE_integer("per_chip_batch", None, "per-chip batch to compile instead of the "
                     "config's (train: global_batch_size / chips; eval: validation.batch_size / "
                     "chips; separate: 1 chunk)")
flags.DEFINE_float("chunk_seconds", None, "separate: chunk length (default: the separation "
                   "tool's)")
flags.DEFINE_integer("max_batch", 4096, "upper bound of the per-chip batch search")
flags.DEFINE_bool("run", False, "with --topology=attached: also time the train step on the "
                  "devices (measured examples/s beside the estimate)")
flags.DEFINE_string("hlo", None, "write the compiled program's HLO text to this file")
program.define_import_flag()  # --import=MODULE: modules that register a mask or backbone
flags.mark_flags_as_required(["config", "topology"])


def _prog():
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "resunet-aot"


def parse_flags(argv):
  args = program.parse_flags_with_config(argv, _prog())
  # libtpu reads its environment when it loads: set it before JAX starts a backend (only the
  # topology's name is needed, so a bad one is reported later, with the other errors).
  try:
    topology = (None if flags.FLAGS.topology == aot.ATTACHED
                else aot.parse_topology(flags.FLAGS.topology))
  except aot.AotError:
    topology = None
  if flags.FLAGS.topology != aot.ATTACHED:
    aot.configure_environment(topology)
  return args


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from resunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    loop.check_config(config)
    report = aot.cross_compile(config, FLAGS.topology, FLAGS.step, search=FLAGS.search,
                               run=FLAGS.run, chunk_seconds=FLAGS.chunk_seconds,
                               per_chip_batch=FLAGS.per_chip_batch, hlo_path=FLAGS.hlo,
                               max_batch=FLAGS.max_batch)
  except (aot.AotError, ValueError) as e:
    print(f"{_prog()}: error: {e}", file=sys.stderr)
    sys.exit(2)
  report["config"] = FLAGS["config"].config_filename
  report["config_overrides"] = [a for a in sys.argv[1:] if a.startswith("--config.")]
  print(aot.format_report(report))
  if FLAGS.json:
    aot.write_json(FLAGS.json, report)
  status = aot.exit_status(report)
  if status:
    best = report.get("largest_fitting_per_chip_batch")
    hint = (f"the largest per-chip batch that fits is {best}" if best else
            "not even a per-chip batch of 1 fits; try --config.model.remat=unit (or stage)")
    print(f"{_prog()}: the {FLAGS.step} step does not fit on {FLAGS.topology} at per-chip batch "
          f"{report['per_chip_batch']}: {hint}", file=sys.stderr)
  sys.exit(status)


def run():
  """``resunet-aot`` and ``python -m resunet_jax.aot``."""
  program.run(main, __name__, __doc__, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
