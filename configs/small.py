r"""The most separation quality that 10 minutes on 2 CPU cores buy (issue 12; README "Learning on a CPU").

The released checkpoints' architecture (ResUNet143 Subbandtime: 4 PQMF subbands, 512/110 STFT,
bounded decoupled mask) at width 1/4 (channels 8-64), 4 encoder levels, one residual unit per stage:
0.34 M parameters. 1 s segments, batch 4, each source the sum of 3 excerpts of different tracks
(mix-audio 3), PyTorch AMSGrad at lr 3e-3 after a 100-update warm-up, then a cosine decay to 0 at the
last update (the schedule fits the run: change num_train_steps and decay_steps together).

  python train.py --config=configs/small.py --workdir=/tmp/resunet_small

Chosen by a search on realistic multitracks (segment length, batch, width, depth, mask,
schedule, learning rate, mix-audio; the table is in the README): the whole run, 1 800 updates with
start-up, compilation, validations and checkpoints, took 547 s on an idle 2-core machine; on held-out
realistic music this config scored +3.16 dB vocals SDR (50 test tracks; the mixture -4.13 dB, an
oracle IRM +8.26 dB).
The built-in data set (synthetic MUSDB18-shaped tracks + the real stempeg excerpt) is written to
~/.cache/resunet_jax on first use (~20 s); validation runs on its test split every 600 updates.

Seeds for comparisons: ``--config.replicas=4`` trains seeds 0..3 in one run (README "Replicas";
on this CPU in less wall time than four runs one after another, bench/bench_replicas.py).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.arch = "resunet143_subbandtime"
  config.model.remat = "none"  # CPU-sized: memory is no concern, recomputing only costs time
  config.model.width = 0.25
  config.model.levels = 4
  config.model.blocks_per_stage = 1
  config.model.center_blocks = 1
  config.data.segment_seconds = 1.0
  config.data.augment.mix_audio = 3
  config.global_batch_size = 4
  config.num_train_steps = 1800
  config.optimizer.learning_rate = 3e-3
  config.schedule.name = "warmup_cosine"
  config.schedule.warm_up_steps = 100
  config.schedule.decay_steps = config.num_train_steps
  config.schedule.end_factor = 0.0
  config.log_every_steps = 20
  config.eval_every_steps = 600
  config.checkpoint_every_steps = 600
  config.validation.num_segments = 8
  config.validation.batch_size = 4
  return config
