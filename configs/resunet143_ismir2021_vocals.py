r"""The paper model and recipe, vocals (REFERENCE §6.1): exactly ``default.py``.

  python train.py --config=configs/resunet143_ismir2021_vocals.py --workdir=/tmp/ismir_vocals \
      --config.data.manual_dir=/data/musdb18

Expected run time: accelerator work (not measured on a GPU here; ~34 s per update at batch 1 on the
2-core CPU). Add ``--config.model.dtype=bfloat16`` on accelerators with fast bf16. Accompaniment instead:
``--config.data.target_sources="('accompaniment',)"``.
"""
from configs import default


def get_config():
  return default.get_config()
