"""Keeps TensorFlow (used only for tf.data / TFDS) off the accelerators that JAX owns."""
import logging

_done = False


def hide_accelerators_from_tf() -> None:
  """``tf.config.set_visible_devices([], "GPU")`` once, before any TF work; harmless on CPU-only TF."""
  global _done
  if _done:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError) as e:  # devices already initialised by someone else.
    logging.getLogger(__name__).warning("Could not hide GPUs from TensorFlow: %s", e)
  _done = True
