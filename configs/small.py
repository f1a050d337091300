r"""A small ResUNet that learns something in minutes on a 2-core CPU, on the built-in data.

The released checkpoints' architecture (ResUNet143 Subbandtime: 4 PQMF subbands, 512/110 STFT,
bounded decoupled mask) at width 1/4 (channels 8-64), 4 encoder levels, one residual unit per stage:
0.34 M parameters, ~4x cheaper per step on CPU than the same network on the 2048-point STFT.
1 s segments, batch 4, lr 1e-3 after a 50-step warm-up, x0.7 every 200 steps (PyTorch amsgrad).

  python train.py --config=configs/small.py --workdir=/tmp/resunet_small

Expected run time: 3-10 minutes on 2 CPU cores (measured: 2 min 44 s for the whole run, 600 updates
at ~4.3 steps/s on an otherwise idle machine, loss 0.144 at step 20 -> 0.050 at 600, validation SDR
8.7 dB at step 200 -> 9.4 dB at 600 on the built-in test split; 0.8-1.3 steps/s on a busier
machine). The built-in data set (synthetic MUSDB18-shaped tracks + the real stempeg excerpt) is
written to ~/.cache/resunet_jax on first use (~20 s).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.arch = "resunet143_subbandtime"
  config.model.width = 0.25
  config.model.levels = 4
  config.model.blocks_per_stage = 1
  config.model.center_blocks = 1
  config.data.segment_seconds = 1.0
  config.global_batch_size = 4
  config.num_train_steps = 600
  config.schedule.warm_up_steps = 50
  config.schedule.decay_steps = 200
  config.schedule.decay_rate = 0.7
  config.log_every_steps = 20
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.validation.num_segments = 8
  config.validation.batch_size = 4
  return config
