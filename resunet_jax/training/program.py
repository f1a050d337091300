"""What ``train.py`` compiles, from a config and a device mesh: one place for it.

``train_program(config, mesh)`` builds the model, optimiser and learning-rate schedule of a config
and the jitted, sharded train step, with the abstract arguments (shape, dtype and sharding) it
runs on; ``eval_program`` does the same for the validation step. ``training.loop`` runs these
programs on the attached devices; ``resunet_jax.aot`` lowers and compiles the very same programs
for hardware that is not attached (a TPU slice described by ``jax.experimental.topologies``), so
what it reports is what train.py would run.

Replicas. ``config.replicas`` = R > 1 trains R independent runs (seeds ``seed .. seed + R - 1``)
in the same program: the state gets a leading replica axis, the batch is (R, B, ...) with B =
``config.global_batch_size`` per replica, and the mesh is 2-D, (``"replica"``: Rm, ``"data"``:
D), chosen from the config and the devices by ``make_mesh_for`` (``replica_layout`` states the
rule); each device holds R / Rm replicas and runs them by ``config.replica_method``
(``resolve_replica_method``). R = 1 builds exactly the one-run program (1-D mesh, no replica
axis). Everything here takes devices that need not be attached (TPU topology devices from
``jax.experimental.topologies``): nothing is allocated or run.
"""
import dataclasses
import math
from typing import Any, Callable, Optional

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


def _abstract_like(tree, shardings):
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


# ------------------------------------------------------------------------------------------------
# Replicas: how many, where they go, how a device runs its share.

REPLICA_METHODS = ("auto",) + step_lib.REPLICA_METHODS


def num_replicas(config) -> int:
  """``config.replicas`` (1 for configs written before the key existed)."""
  return int(config.get("replicas", 1) or 1)


def replica_seeds(config):
  """The seeds of the replicas: ``seed .. seed + replicas - 1``."""
  return [int(config.seed) + k for k in range(num_replicas(config))]


def resolve_replica_method(config, platform: str) -> str:
  """``config.replica_method`` with "auto" resolved for ``platform`` (a device's ``.platform``).

  How a device runs the replicas it holds. Measured on the 2-core CPU (bench/bench_replicas.py,
  configs/small.py, 4 replicas on one device; README "Replicas"): 4 replica-updates with
  ``unroll`` (the one-replica step written out once per replica in the same program) take what 4
  updates of one run take (3.65 s vs 3.66 s; compiling 117 s vs 42 s), with ``vmap`` 2.3x as long
  (XLA:CPU's grouped convolutions), with ``map`` 12x (XLA:CPU runs convolutions inside a loop far
  slower). "auto" = "unroll" on CPU, "vmap" elsewhere (GPU and TPU compilers have native grouped
  convolutions, and one program over the replica axis keeps one run's compile time; not measured
  here).
  """
  method = config.get("replica_method", "auto") or "auto"
  if method != "auto":
    return method
  return "unroll" if platform == "cpu" else "vmap"


def replica_layout(replicas: int, num_devices: int, global_batch_size: int):
  """(Rm, D): the (``"replica"``, ``"data"``) mesh shape for R replicas on ``num_devices``.

  The rule: Rm * D = number of devices, Rm divides R (each device holds R / Rm replicas) and D
  divides the per-replica global batch. Of the shapes that fit, the one with the most replica
  groups (replicas spread over devices need no communication; splitting the batch adds the
  gradient and BatchNorm all-reduces). Raises ValueError naming the rule when none fits.
  """
  fits = [rm for rm in range(num_devices, 0, -1)
          if num_devices % rm == 0 and replicas % rm == 0
          and global_batch_size % (num_devices // rm) == 0]
  if fits:
    return fits[0], num_devices // fits[0]
  raise ValueError(
      f"config.replicas={replicas} with config.global_batch_size={global_batch_size} (per "
      f"replica) cannot be laid out on {num_devices} devices: the mesh is replica x data = "
      f"{num_devices} devices, where replica must divide config.replicas and data must divide "
      f"config.global_batch_size. No such shape exists; change config.replicas, "
      "config.global_batch_size or config.num_devices (e.g. a batch that is a multiple of "
      f"{num_devices // math.gcd(num_devices, replicas)}).")


def make_mesh_for(config, devices) -> jax.sharding.Mesh:
  """The mesh ``train.py`` uses for ``config`` on ``devices`` (attached or not): with one
  replica the 1-D ``"data"`` mesh of every device (``step.make_mesh``), with R > 1 the
  (``"replica"``, ``"data"``) mesh of ``replica_layout``. The global batch rule of one run is
  checked by ``step.check_global_batch`` (the loop does, with the process count)."""
  devices = list(devices)
  replicas = num_replicas(config)
  if replicas == 1:
    return step_lib.make_mesh(devices)
  groups, data = replica_layout(replicas, len(devices), int(config.global_batch_size))
  return step_lib.make_replica_mesh(groups, data, devices)


def is_replicated(mesh) -> bool:
  return step_lib.REPLICA_AXIS in mesh.axis_names


def data_axis_size(mesh) -> int:
  """Devices along ``"data"`` (the whole mesh without replicas)."""
  return int(mesh.shape[step_lib.AXIS])


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The train step of a config on a mesh, and what it takes."""
  config: Any
  mesh: jax.sharding.Mesh
  model: models.Separator
  tx: optax.GradientTransformation
  learning_rate_fn: Callable
  train_step: Any  # jit(shard_map(train_step)): (state, batch, metrics) -> (state, metrics)
  replicas: int = 1
  replica_method: Optional[str] = None  # how a device runs its replicas (R > 1)

  @property
  def global_batch_size(self) -> int:
    """Examples per update of one replica (``config.global_batch_size``)."""
    return int(self.config.global_batch_size)

  @property
  def seeds(self):
    return replica_seeds(self.config)

  def _state_shapes(self):
    if self.replicas == 1:
      return jax.eval_shape(lambda: state_lib.create_train_state(self.model, self.tx,
                                                                 self.config.seed))
    return jax.eval_shape(lambda: state_lib.create_replicated_train_state(
        self.model, self.tx, self.seeds))

  def state_shardings(self):
    """The train state's shardings: replicated over the mesh (one run), or the replica axis
    split over ``"replica"`` and the rest replicated (R > 1)."""
    shapes = self._state_shapes()
    if self.replicas == 1:
      return jax.tree_util.tree_map(lambda _: step_lib.replicated(self.mesh), shapes)
    return step_lib.replica_state_shardings(self.mesh, shapes)

  def abstract_state(self) -> state_lib.TrainState:
    """The train state's shapes, dtypes and shardings (every leaf but ``step`` with a leading
    replica axis when R > 1)."""
    shapes = self._state_shapes()
    if self.replicas == 1:
      return _abstract(shapes, step_lib.replicated(self.mesh))
    return _abstract_like(shapes, step_lib.replica_state_shardings(self.mesh, shapes))

  def init_state(self, variables=None) -> state_lib.TrainState:
    """A fresh state on the mesh: replica k initialised from seed ``seed + k`` (or every replica
    from ``variables``, fine-tuning)."""
    if self.replicas == 1:
      return state_lib.init_train_state(self.model, self.tx, self.config.seed, variables,
                                        step_lib.replicated(self.mesh))
    return state_lib.init_replicated_train_state(self.model, self.tx, self.seeds, variables,
                                                 self.state_shardings())

  def batch_shape(self):
    """The leading axes of a batch: (B,), or (R, B) with replicas."""
    b = self.global_batch_size
    return (b,) if self.replicas == 1 else (self.replicas, b)

  def batch_sharding(self):
    if self.replicas == 1:
      return step_lib.batch_sharded(self.mesh)
    return step_lib.replica_batch_sharded(self.mesh)

  def abstract_batch(self):
    """A global batch {"mixture": (B, L, 2), "targets": (B, S, L, 2)} (float32, split over the
    mesh), as ``step.global_batch`` makes it from the input pipeline; with replicas (R, B, ...),
    as ``step.replica_global_batch`` makes it."""
    lead, n, s = self.batch_shape(), segment_samples(self.config), self.model.num_sources
    sharding = self.batch_sharding()
    return {"mixture": jax.ShapeDtypeStruct(lead + (n, AUDIO_CHANNELS), jnp.float32,
                                            sharding=sharding),
            "targets": jax.ShapeDtypeStruct(lead + (s, n, AUDIO_CHANNELS), jnp.float32,
                                            sharding=sharding)}

  def empty_metrics(self):
    """Fresh metrics on the mesh (one set per replica when R > 1)."""
    return step_lib.empty_metrics(self.mesh, self.replicas)

  def abstract_metrics(self):
    empty = step_lib.TrainMetrics.empty()
    if self.replicas == 1:
      return _abstract(empty, step_lib.replicated(self.mesh))
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((self.replicas,) + np.shape(x), x.dtype,
                                       sharding=step_lib.replica_sharded(self.mesh)), empty)

  def abstract_args(self):
    return self.abstract_state(), self.abstract_batch(), self.abstract_metrics()

  def lower(self):
    """``train_step.lower`` on the abstract arguments: nothing is allocated or run."""
    return self.train_step.lower(*self.abstract_args())


def _check_mesh(config, mesh):
  replicas = num_replicas(config)
  if replicas == 1 and is_replicated(mesh):
    raise ValueError("config.replicas=1, but the mesh has a replica axis; use make_mesh_for")
  if replicas > 1:
    if not is_replicated(mesh):
      raise ValueError(f"config.replicas={replicas} needs a ('replica', 'data') mesh "
                       "(make_mesh_for(config, devices))")
    groups = int(mesh.shape[step_lib.REPLICA_AXIS])
    if replicas % groups:
      raise ValueError(f"config.replicas={replicas} is not divisible by the mesh's {groups} "
                       "replica groups")


def train_program(config, mesh, *, donate: bool = True) -> TrainProgram:
  """The train step ``train.py`` runs for ``config`` on ``mesh`` (``make_mesh_for``; the model's
  "auto" options chosen for the mesh's platform, so a mesh of TPU devices described on another host
  gets what a TPU host would run)."""
  _check_mesh(config, mesh)
  model = build_model(config, mesh_platform(mesh))
  tx = optim.make_optimizer(config)
  lr_fn = optim.make_schedule(config)
  replicas = num_replicas(config)
  loss = step_lib.LOSSES[config.loss]
  if replicas == 1:
    train_step = step_lib.make_train_step(mesh, model, tx, lr_fn, loss, donate=donate)
    method = None
  else:
    method = resolve_replica_method(config, mesh_platform(mesh))
    train_step = step_lib.make_replicated_train_step(mesh, model, tx, lr_fn, loss,
                                                     donate=donate, method=method)
  return TrainProgram(config=config, mesh=mesh, model=model, tx=tx, learning_rate_fn=lr_fn,
                      train_step=train_step, replicas=replicas, replica_method=method)


def validation_batch_size(config, num_segments: int, num_devices: int) -> int:
  """The validation batch: ``config.validation.batch_size`` (at most the number of segments),
  rounded up to a multiple of ``num_devices`` (the devices the segments are split over: the
  ``"data"`` axis of the mesh)."""
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
  replicas: int = 1  # R > 1: variables with a leading replica axis, outputs (R, b, ...)

  def abstract_args(self):
    variables = jax.eval_shape(lambda: models.init_variables(self.model, jax.random.key(0)))
    sharded = step_lib.batch_sharded(self.mesh)
    n, s = segment_samples(self.config), self.model.num_sources
    if self.replicas == 1:
      abstract_variables = _abstract(variables, step_lib.replicated(self.mesh))
    else:
      abstract_variables = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct((self.replicas,) + np.shape(x), x.dtype,
                                         sharding=step_lib.replica_sharded(self.mesh)),
          variables)
    return (abstract_variables,
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
  _check_mesh(config, mesh)
  window = int(round(config.validation.window_seconds * sources_lib.SAMPLE_RATE))
  replicas = num_replicas(config)
  if replicas == 1:
    eval_step = step_lib.make_eval_step(mesh, model, window)
  else:
    method = resolve_replica_method(config, mesh_platform(mesh))
    eval_step = step_lib.make_replicated_eval_step(mesh, model, window, method)
  return EvalProgram(config=config, mesh=mesh, model=model,
                     batch_size=validation_batch_size(config, num_segments, data_axis_size(mesh)),
                     eval_step=eval_step, replicas=replicas)
