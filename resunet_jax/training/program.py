"""What ``train.py`` compiles, from a config and a device mesh: one place for it.

``train_program(config, mesh)`` builds the model, optimiser and learning-rate schedule of a config
and the jitted, sharded train step, with the abstract arguments (shape, dtype and sharding) it
runs on; ``eval_program`` does the same for the validation step. ``training.loop`` runs these
programs on the attached devices; ``resunet_jax.aot`` lowers and compiles the very same programs
for hardware that is not attached (a TPU slice described by ``jax.experimental.topologies``), so
what it reports is what train.py would run.
"""
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resunet_jax import models
from resunet_jax import sources as sources_lib
from resunet_jax.training import optim
from resunet_jax.training import state as state_lib
from resunet_jax.training import step as step_lib

AUDIO_CHANNELS = 2


def build_model(config, platform=None) -> models.Separator:
  """The Separator of ``config.model``, one output per ``config.data.target_sources``; with
  ``platform`` ("cpu", "gpu", "tpu"), its "auto" runtime options (conv backend, layout) are
  chosen for that platform (``models.for_platform``), else where it runs."""
  model = models.build_model(num_sources=len(config.data.target_sources), **config.model)
  return model if platform is None else models.for_platform(model, platform)


def mesh_platform(mesh) -> str:
  return mesh.devices.flat[0].platform


def segment_samples(config) -> int:
  return int(round(float(config.data.segment_seconds) * sources_lib.SAMPLE_RATE))


def _abstract(tree, sharding):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The train step of a config on a mesh, and what it takes."""
  config: Any
  mesh: jax.sharding.Mesh
  model: models.Separator
  tx: optax.GradientTransformation
  learning_rate_fn: Callable
  train_step: Any  # jit(shard_map(train_step)): (state, batch, metrics) -> (state, metrics)

  @property
  def global_batch_size(self) -> int:
    return int(self.config.global_batch_size)

  def abstract_state(self) -> state_lib.TrainState:
    """The train state's shapes and dtypes, replicated over the mesh."""
    shapes = jax.eval_shape(lambda: state_lib.create_train_state(self.model, self.tx,
                                                                 self.config.seed))
    return _abstract(shapes, step_lib.replicated(self.mesh))

  def abstract_batch(self):
    """A global batch {"mixture": (B, L, 2), "targets": (B, S, L, 2)} (float32, split over the
    mesh), as ``step.global_batch`` makes it from the input pipeline."""
    b, n, s = self.global_batch_size, segment_samples(self.config), self.model.num_sources
    sharding = step_lib.batch_sharded(self.mesh)
    return {"mixture": jax.ShapeDtypeStruct((b, n, AUDIO_CHANNELS), jnp.float32,
                                            sharding=sharding),
            "targets": jax.ShapeDtypeStruct((b, s, n, AUDIO_CHANNELS), jnp.float32,
                                            sharding=sharding)}

  def abstract_metrics(self):
    return _abstract(step_lib.TrainMetrics.empty(), step_lib.replicated(self.mesh))

  def abstract_args(self):
    return self.abstract_state(), self.abstract_batch(), self.abstract_metrics()

  def lower(self):
    """``train_step.lower`` on the abstract arguments: nothing is allocated or run."""
    return self.train_step.lower(*self.abstract_args())


def train_program(config, mesh, *, donate: bool = True) -> TrainProgram:
  """The train step ``train.py`` runs for ``config`` on ``mesh`` (the model's "auto" options
  chosen for the mesh's platform, so a mesh of TPU devices described on another host gets what a
  TPU host would run)."""
  model = build_model(config, mesh_platform(mesh))
  tx = optim.make_optimizer(config)
  lr_fn = optim.make_schedule(config)
  train_step = step_lib.make_train_step(mesh, model, tx, lr_fn, step_lib.LOSSES[config.loss],
                                        donate=donate)
  return TrainProgram(config=config, mesh=mesh, model=model, tx=tx, learning_rate_fn=lr_fn,
                      train_step=train_step)


def validation_batch_size(config, num_segments: int, num_devices: int) -> int:
  """The validation batch: ``config.validation.batch_size`` (at most the number of segments),
  rounded up to a multiple of the device count."""
  wanted = min(int(config.validation.batch_size), max(int(num_segments), 1))
  return int(math.ceil(wanted / num_devices)) * num_devices


@dataclasses.dataclass(frozen=True)
class EvalProgram:
  """The validation step of a config on a mesh, and what it takes."""
  config: Any
  mesh: jax.sharding.Mesh
  model: models.Separator
  batch_size: int
  eval_step: Any  # (variables, mixture, targets) -> (estimates, SDR per segment and source)

  def abstract_args(self):
    variables = jax.eval_shape(lambda: models.init_variables(self.model, jax.random.key(0)))
    sharded = step_lib.batch_sharded(self.mesh)
    n, s = segment_samples(self.config), self.model.num_sources
    return (_abstract(variables, step_lib.replicated(self.mesh)),
            jax.ShapeDtypeStruct((self.batch_size, n, AUDIO_CHANNELS), jnp.float32,
                                 sharding=sharded),
            jax.ShapeDtypeStruct((self.batch_size, s, n, AUDIO_CHANNELS), jnp.float32,
                                 sharding=sharded))

  def lower(self):
    return self.eval_step.lower(*self.abstract_args())


def eval_program(config, mesh, *, num_segments=None, model=None) -> EvalProgram:
  """The validation step ``train.py`` runs for ``config`` on ``mesh``."""
  model = build_model(config, mesh_platform(mesh)) if model is None else model
  if num_segments is None:
    num_segments = config.validation.num_segments
  window = int(round(config.validation.window_seconds * sources_lib.SAMPLE_RATE))
  return EvalProgram(config=config, mesh=mesh, model=model,
                     batch_size=validation_batch_size(config, num_segments, mesh.devices.size),
                     eval_step=step_lib.make_eval_step(mesh, model, window))
