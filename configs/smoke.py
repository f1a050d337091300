r"""Smoke size for tests: a 2-level, width-1/8 ResUNet on 0.25 s segments, a few steps.

  python train.py --config=configs/smoke.py --workdir=/tmp/resunet_smoke

Expected run time: ~35 s on 2 CPU cores (measured; mostly start-up and compilation, then ~0.5 s per
update on one CPU device).
``--config.data.name=random`` skips TensorFlow and the built-in data set entirely.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.remat = "none"  # CPU-sized: memory is no concern, recomputing only costs time
  config.model.width = 0.125  # channels (4, 8)
  config.model.levels = 2
  config.model.blocks_per_stage = 1
  config.model.center_blocks = 1
  config.data.segment_seconds = 0.25
  config.data.num_parallel_calls = 2
  config.global_batch_size = 8  # divisible by the 8 fake CPU devices of the tests
  config.num_train_steps = 6
  config.optimizer.learning_rate = 3e-3
  config.schedule.warm_up_steps = 2
  config.schedule.decay_steps = 4
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2
  config.validation.num_segments = 8
  config.validation.batch_size = 8
  config.validation.window_seconds = 0.25
  config.validation.audio_examples = 1
  return config
