r"""ResUNet143 Subbandtime (the released checkpoints' model, REFERENCE §4.3), vocals, paper recipe.

  python train.py --config=configs/resunet143_subbandtime_vocals.py --workdir=/tmp/subband_vocals \
      --config.data.manual_dir=/data/musdb18

Expected run time: accelerator work (not measured on a GPU here; ~5.5 s per update at batch 1 and
~14 s at batch 4 on the 2-core CPU, bench/bench_train.py). Fine-tune the released v2 checkpoint with
``--init_from=DIR`` (``python -m resunet_jax.convert resunet143_subbtandtime_vocals_8.7dB_500k_steps_v2.pth DIR``).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.arch = "resunet143_subbandtime"
  return config
