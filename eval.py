"""Evaluates a checkpoint (or ideal masks) on a MUSDB18 split with museval, SiSEC 2018 style.

  python eval.py --checkpoint=models/vocals --manual_dir=/data/musdb18 --residual

The flags and the program are ``resunet_jax.cli.evaluate`` (also installed as ``resunet-eval``);
its docstring has more examples, ``resunet_jax.evaluation`` the protocols and the file layout.
"""
from resunet_jax.cli import evaluate

FLAGS, main = evaluate.FLAGS, evaluate.main

if __name__ == "__main__":
  evaluate.run()
