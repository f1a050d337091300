r"""One ResUNet143 Subbandtime separating vocals, bass, drums and other (the authors'
``vocals-bass-drums-other,resunet_subbandtime.yaml``, REFERENCE §6.1): the mixture is the sum of the
four stems, no mix-audio (one excerpt per source), validation every 50 000 steps.

  python train.py --config=configs/resunet143_subbandtime_4stems.py --workdir=/tmp/subband_4stems \
      --config.data.manual_dir=/data/musdb18

Expected run time: accelerator work (not measured on a GPU here; the per-update cost is that of
resunet143_subbandtime_vocals.py plus a 4x larger head).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.arch = "resunet143_subbandtime"
  config.data.input_sources = ("vocals", "bass", "drums", "other")
  config.data.target_sources = ("vocals", "bass", "drums", "other")
  config.data.augment.mix_audio = 1
  config.eval_every_steps = 50_000
  config.checkpoint_every_steps = 50_000
  return config
