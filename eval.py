"""Evaluates a checkpoint (or ideal masks) on a MUSDB18 split with museval, SiSEC 2018 style.

  # a training run: its config gives the data; the workdir its latest checkpoint
  python eval.py --config=configs/default.py --workdir=/tmp/run
  # a model directory (e.g. a converted bytesep checkpoint) on the real MUSDB18 test set
  python eval.py --checkpoint=models/vocals --manual_dir=/data/musdb18 --residual \
      --protocols=authors,sisec_joint
  # ideal-mask upper bounds
  python eval.py --oracle=irm,irm_unbounded,cirm --manual_dir=/data/musdb18 --eval_dir=/tmp/oracle

Results go to --eval_dir (default <checkpoint>/eval/<split>, or <workdir>/eval/step_<n>/<split>):
museval per-track JSON files, tracks.csv, summary.csv/json and a printed table; a rerun resumes.
The flags and the program are ``resunet_jax.cli.evaluate`` (also installed as ``resunet-eval``);
see ``resunet_jax.evaluation`` for the protocols and the file layout.
"""
from resunet_jax.cli import evaluate

FLAGS, main = evaluate.FLAGS, evaluate.main

if __name__ == "__main__":
  evaluate.run()
