"""MUSDB18 input: the ``musdb18`` TFDS builder and the tf.data training / evaluation pipelines.

Importing this package registers the builder (``tfds.builder("musdb18/stem")``, ``"musdb18/hq"``).
It imports no TensorFlow: TF is loaded, with the GPUs hidden from it, by the functions that need it.
"""
from resunet_jax.data import musdb18  # registers the TFDS builder.
from resunet_jax.data.musdb18 import Musdb18
from resunet_jax.data.pipeline import builtin_manual_dir
from resunet_jax.data.pipeline import default_data_config
from resunet_jax.data.pipeline import eval_tracks
from resunet_jax.data.pipeline import train_batches
from resunet_jax.data.pipeline import validation_segments
