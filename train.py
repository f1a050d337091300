r"""Trains a separator: ``python train.py --config=configs/<name>.py --workdir=DIR``.

  python train.py --config=configs/small.py --workdir=/tmp/resunet_small

The flags and the program are ``resunet_jax.cli.train`` (also installed as ``resunet-train``); its
docstring describes resuming, preemption (exit code 143), config changes and fine-tuning.
"""
from resunet_jax.cli import train

FLAGS, main, parse_flags = train.FLAGS, train.main, train.parse_flags

if __name__ == "__main__":
  train.run()
