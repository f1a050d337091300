r"""MobileNet Subbandtime (0.3 M parameters, REFERENCE §4.5), vocals, paper recipe.

  python train.py --config=configs/mobilenet_subbandtime_vocals.py --workdir=/tmp/mobilenet_vocals \
      --config.data.manual_dir=/data/musdb18

Expected run time: accelerator work for 500 001 steps (not measured on a GPU here); on the 2-core CPU
an update takes ~1.2 s at batch 1 and ~6 s at batch 4 (bench/bench_train.py).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.arch = "mobilenet_subbandtime"
  # No remat: the recipe's batch of 16 x 3 s fits one 16 GB v5e chip without it (10.34 GiB,
  # bfloat16; resunet-aot, bench/aot_reports/mobilenet_b16_v5e.json).
  config.model.remat = "none"
  return config
