"""MUSDB18 input: the ``musdb18`` TFDS builder and the tf.data training / evaluation pipelines.

One module a concern:

  recipes        the data config (``default_data_config``) and its validated form, the ``Recipe``
  sampling       training examples: segments and augmentations as a pure function of (seed, step, k)
  prepare        the built-in data set, the TFDS build of a manual dir, the segment cache
  pipeline       the tf.data iterator of training batches (``train_batches``)
  heldout        whole evaluation tracks (``eval_tracks``) and fixed validation segments
  musdb18        the TFDS builder (stems_io: track files; tracklists: the official splits)
  segment_cache  the memory-mapped int16 copy of a split that training segments are cut from
  synthetic      MUSDB18-shaped synthetic tracks (the built-in data set, tests)
  build          command line: build the TFDS data set (``resunet-build-data``)

Importing this package registers the builder (``tfds.builder("musdb18/stem")``, ``"musdb18/hq"``).
It imports no TensorFlow: TF is loaded, with the GPUs hidden from it, by the functions that need it.
"""
from resunet_jax.data import musdb18  # registers the TFDS builder.
from resunet_jax.data.heldout import eval_tracks
from resunet_jax.data.heldout import validation_segments
from resunet_jax.data.musdb18 import Musdb18
from resunet_jax.data.pipeline import train_batches
from resunet_jax.data.prepare import builtin_manual_dir
from resunet_jax.data.recipes import default_data_config
