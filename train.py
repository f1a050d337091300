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

  python train.py --config=configs/small.py --workdir=/tmp/resunet_small

The flags and the program are ``resunet_jax.cli.train`` (also installed as ``resunet-train``).
"""
from resunet_jax.cli import train

FLAGS, main, parse_flags = train.FLAGS, train.main, train.parse_flags

if __name__ == "__main__":
  train.run()
