"""The train and validation steps: written per device, run data-parallel with ``jax.shard_map``.

The per-device step sees ``global_batch / num_devices`` examples. Like ``pmap`` it averages the loss
and the gradients over the device axis with ``lax.pmean`` and the model's BatchNorm layers average
their batch statistics over the same axis (``Separator.bn_axis_name``), so every device holds the
global-batch mean gradient and the statistics of the whole global batch -- the authors'
synchronised BatchNorm (REFERENCE §4.8). Parameters, BN running statistics and the optimiser state
are replicated; the batch is split over the 1-D device mesh axis ``"data"``, which spans every
device of every process.

Replicas (``config.replicas`` = R > 1, see ``training.program``): R independent runs in one
program. Every leaf of the state but the step counter gets a leading replica axis, the batch is
(R, B, ...), and the mesh is 2-D, (``"replica"``, ``"data"``): the replica axis of the state and
the batch is split over ``"replica"``, the batch axis over ``"data"``, and the gradient and
BatchNorm means run over ``"data"`` only -- replicas never talk to each other. A device holding
several replicas runs them by one of ``REPLICA_METHODS`` (``over_replicas``).
"""
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resunet_jax import layers
from resunet_jax import models
from resunet_jax.training import sdr as sdr_lib
from resunet_jax.training import state as state_lib

AXIS = "data"
REPLICA_AXIS = "replica"
# How a device runs the replicas it holds: "vmap" batches them (one program over a leading axis;
# convolutions with per-replica kernels become grouped convolutions), "unroll" writes the
# one-replica step out once per replica in the same program, "map" runs them one after the other
# in a loop on the device (``lax.map``; the loop body is the one-replica step). Which is fastest
# depends on the platform: ``program.resolve_replica_method``.
REPLICA_METHODS = ("vmap", "unroll", "map")

Metrics = Dict[str, jax.Array]


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process), axis ``"data"``."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def make_replica_mesh(replica_groups: int, data: int, devices: Sequence[jax.Device]
                      ) -> jax.sharding.Mesh:
  """A 2-D mesh (``"replica"``: ``replica_groups``, ``"data"``: ``data``) over ``devices``."""
  devices = list(devices)
  if replica_groups * data != len(devices):
    raise ValueError(f"a {replica_groups} x {data} mesh needs {replica_groups * data} devices, "
                     f"got {len(devices)}")
  return jax.make_mesh((replica_groups, data), (REPLICA_AXIS, AXIS), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)


def replica_sharded(mesh) -> NamedSharding:
  """Leading axis = replicas, split over the mesh's ``"replica"`` axis (the state, the metrics)."""
  return NamedSharding(mesh, P(REPLICA_AXIS))


def replica_batch_sharded(mesh) -> NamedSharding:
  """(R, B, ...) batches: replicas over ``"replica"``, examples over ``"data"``."""
  return NamedSharding(mesh, P(REPLICA_AXIS, AXIS))


def replica_state_specs():
  """The PartitionSpec prefix of a replicated ``TrainState``: the step counter is one scalar for
  all replicas, every other leaf has the leading replica axis."""
  rep = P(REPLICA_AXIS)
  return state_lib.TrainState(step=P(), params=rep, batch_stats=rep, constants=rep,
                              opt_state=rep, rng=rep)


def replica_state_shardings(mesh, state):
  """``state``-shaped shardings of a replicated state (see ``replica_state_specs``)."""
  step = replicated(mesh)
  rep = replica_sharded(mesh)
  return state.replace(step=step, **{
      f: jax.tree_util.tree_map(lambda _: rep, getattr(state, f))
      for f in ("params", "batch_stats", "constants", "opt_state", "rng")})


def l1_wav_loss(estimate, target):
  """The authors' ``l1_wav``: mean |estimate - target| over batch, sources, samples, channels
  (in float32, or float64 for a float64 model)."""
  dtype = jnp.promote_types(estimate.dtype, jnp.float32)
  return jnp.mean(jnp.abs(estimate.astype(dtype) - target.astype(dtype)))


LOSSES = {"l1_wav": l1_wav_loss}


def train_step(state: state_lib.TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               model: models.Separator, tx: optax.GradientTransformation,
               learning_rate_fn: Callable, loss_fn: Callable = l1_wav_loss,
               axis_name: Optional[str] = AXIS) -> Tuple[state_lib.TrainState, Metrics]:
  """One optimiser update on this device's share of the batch: (state, batch, rng) -> (state, metrics).

  ``batch``: {"mixture": (b, L, C), "targets": (b, S, L, C)}. ``model`` must have
  ``bn_axis_name == axis_name`` (None: a plain single-device step). ``rng`` is this update's key
  (the separators have no stochastic layers; it is folded with the device index and handed to
  ``apply`` as the "dropout" stream for models that do).
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  other = {"batch_stats": state.batch_stats}
  if state.constants:
    other["constants"] = state.constants

  def compute_loss(params):
    estimate, updates = model.apply({"params": params, **other}, batch["mixture"], train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
    return loss_fn(estimate, batch["targets"]), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  if axis_name is not None:
    grads = layers.axis_mean(grads, axis_name)
    loss = layers.axis_mean(loss, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """What the loop reports, accumulated on the devices between two reports (no host transfer per
  step): means of the loss and the gradient norm over the steps since the last report (NaN if
  any step's was not finite), the last learning rate."""
  loss: clu_metrics.Average.from_output("loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def make_train_step(mesh, model: models.Separator, tx: optax.GradientTransformation,
                    learning_rate_fn: Callable, loss_fn: Callable = l1_wav_loss,
                    donate: bool = True):
  """jit(shard_map(train_step)) over ``mesh``: global (state, batch, metrics) -> (state, metrics).

  The state and the metrics are replicated, the batch is split over the mesh axis. ``metrics`` is
  a ``TrainMetrics`` (start from ``TrainMetrics.empty()``) into which this update's values are
  merged on the devices. The update's key is ``fold_in(state.rng, state.step)`` (a pure function
  of the step, for exact resumes).
  """
  model = model.clone(bn_axis_name=AXIS)
  per_device = functools.partial(train_step, model=model, tx=tx,
                                 learning_rate_fn=learning_rate_fn, loss_fn=loss_fn,
                                 axis_name=AXIS)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)

  def global_step(state, batch, metrics):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    state, step_metrics = sharded(state, batch, rng)
    return state, metrics.merge(TrainMetrics.single_from_model_output(**step_metrics))

  return jax.jit(global_step, donate_argnums=(0, 2) if donate else ())


def over_replicas(fn, method: str, *args, shared=()):
  """``fn(*args_k, *shared)`` for every replica k (leading axis of each of ``args``) on this
  device, by ``method`` (``REPLICA_METHODS``: ``jax.vmap``, a Python loop unrolled into the
  program, or ``lax.map``); outputs stacked on a leading axis. ``shared`` arguments are the same
  for every replica."""
  if method == "vmap":
    return jax.vmap(lambda *a: fn(*a, *shared))(*args)
  if method == "map":
    return lax.map(lambda a: fn(*a, *shared), args)
  if method == "unroll":
    count = jax.tree_util.tree_leaves(args)[0].shape[0]
    outs = [fn(*jax.tree_util.tree_map(lambda x, k=k: x[k], args), *shared) for k in range(count)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
  raise ValueError(f"unknown replica method {method!r}; expected one of {REPLICA_METHODS}")


def make_replicated_train_step(mesh, model: models.Separator, tx: optax.GradientTransformation,
                               learning_rate_fn: Callable, loss_fn: Callable = l1_wav_loss,
                               donate: bool = True, method: str = "vmap"):
  """``make_train_step`` for R replicas on a (``"replica"``, ``"data"``) mesh.

  (state, batch, metrics) -> (state, metrics): every state leaf but ``step`` has a leading
  replica axis (split over ``"replica"``), the batch is (R, B, ...) (replicas over
  ``"replica"``, examples over ``"data"``), ``metrics`` a ``TrainMetrics`` with a leading replica
  axis. Replica k's update is exactly ``train_step`` on its own state and batch, with its own key
  ``fold_in(state.rng[k], state.step)``; the gradient and BatchNorm means run over ``"data"``.
  """
  if method not in REPLICA_METHODS:
    raise ValueError(f"unknown replica method {method!r}; expected one of {REPLICA_METHODS}")
  model = model.clone(bn_axis_name=AXIS)
  per_replica = functools.partial(train_step, model=model, tx=tx,
                                  learning_rate_fn=learning_rate_fn, loss_fn=loss_fn,
                                  axis_name=AXIS)

  def per_device(state, batch, metrics):
    step = state.step

    def one(replica_state, replica_batch, replica_metrics):
      rng = jax.random.fold_in(jax.random.wrap_key_data(replica_state.rng), step)
      new, out = per_replica(replica_state.replace(step=step), replica_batch, rng)
      return (new.replace(step=None),
              replica_metrics.merge(TrainMetrics.single_from_model_output(**out)))

    rest, metrics = over_replicas(one, method, state.replace(step=None), batch, metrics)
    return rest.replace(step=step + 1), metrics

  specs = replica_state_specs()
  global_step = jax.shard_map(per_device, mesh=mesh,
                              in_specs=(specs, P(REPLICA_AXIS, AXIS), P(REPLICA_AXIS)),
                              out_specs=(specs, P(REPLICA_AXIS)), check_vma=False)
  return jax.jit(global_step, donate_argnums=(0, 2) if donate else ())


def check_global_batch(global_batch_size: int, num_devices: int, num_processes: int = 1) -> None:
  """Raises ValueError, naming the rule and the nearest valid sizes, when the global batch cannot
  be split evenly over the devices (every process holds the same number of devices, so the
  examples of a process are then an even share too)."""
  if global_batch_size >= 1 and global_batch_size % num_devices == 0:
    return
  below = (global_batch_size // num_devices) * num_devices
  above = below + num_devices
  nearest = [n for n in (below, above) if n >= 1]
  where = (f"{num_devices} devices" if num_processes == 1
           else f"{num_devices} devices ({num_processes} processes x "
                f"{num_devices // num_processes})")
  raise ValueError(
      f"config.global_batch_size={global_batch_size} cannot be split evenly over the {where}: it "
      f"must be a multiple of {num_devices} (nearest valid: "
      f"{' or '.join(str(n) for n in nearest)}). To scale the recipe to a larger batch, see "
      "configs/resunet143_ismir2021_pod.py (learning rate and schedule rules).")


def eval_step(variables, mixture, targets, *, model: models.Separator, window: int):
  """Separation of validation segments (inference mode, running BN statistics).

  (b, L, C) mixture, (b, S, L, C) targets -> estimates (b, S, L, C), SDR (b, S) per segment and
  source (median over ``window``-sample windows).
  """
  estimate = model.apply(variables, mixture, train=False)
  return estimate, sdr_lib.segment_sdr(targets, estimate.astype(jnp.float32), window)


def make_eval_step(mesh, model: models.Separator, window: int):
  per_device = functools.partial(eval_step, model=model.clone(bn_axis_name=None), window=window)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                          out_specs=(P(AXIS), P(AXIS)), check_vma=False)
  return jax.jit(sharded)


def make_replicated_eval_step(mesh, model: models.Separator, window: int, method: str = "vmap"):
  """``make_eval_step`` for replicated variables (leading replica axis, split over
  ``"replica"``): the same segments (split over ``"data"``) through every replica ->
  estimates (R, b, S, L, C), SDR (R, b, S)."""
  per_replica = functools.partial(eval_step, model=model.clone(bn_axis_name=None), window=window)

  def per_device(variables, mixture, targets):
    return over_replicas(per_replica, method, variables, shared=(mixture, targets))

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(REPLICA_AXIS), P(AXIS), P(AXIS)),
                          out_specs=(P(REPLICA_AXIS, AXIS), P(REPLICA_AXIS, AXIS)),
                          check_vma=False)
  return jax.jit(sharded)


def global_batch(mesh, host_batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
  """Per-process batches (B_host, ...) -> global arrays (B_host * process_count, ...) split over
  the mesh. Process p's rows are global rows [p * B_host, (p + 1) * B_host)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}


def global_array_from_host(mesh, array: np.ndarray, spec=P(AXIS)) -> jax.Array:
  """An array every process holds in full, laid out over the mesh."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, NamedSharding(mesh, spec),
                                      lambda index: array[index])


def to_host(x) -> np.ndarray:
  """A global array (replicated or sharded over processes) as one numpy array on every process."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def empty_metrics(mesh, replicas: int = 1) -> TrainMetrics:
  """A fresh ``TrainMetrics``, replicated over ``mesh`` (a global array on every process); with
  ``replicas`` > 1 one per replica (leading axis, split over ``"replica"``)."""
  if replicas == 1:
    return jax.tree_util.tree_map(
        lambda x: global_array_from_host(mesh, np.asarray(x), P()), TrainMetrics.empty())
  return jax.tree_util.tree_map(
      lambda x: global_array_from_host(
          mesh, np.broadcast_to(np.asarray(x), (replicas,) + np.shape(x)), P(REPLICA_AXIS)),
      TrainMetrics.empty())


def process_indices(sharding, global_shape) -> Tuple[list, ...]:
  """Per dimension, the sorted indices of ``global_shape`` that this process's devices hold
  (what ``jax.make_array_from_process_local_data`` expects the local data to cover)."""
  held = [set() for _ in global_shape]
  for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
    for dim, (sl, size) in enumerate(zip(index, global_shape)):
      held[dim].update(range(*sl.indices(size)))
  return tuple(sorted(h) for h in held)


def replica_global_batch(mesh, global_shape_prefix, local_batch: Dict[str, np.ndarray]
                         ) -> Dict[str, jax.Array]:
  """This process's part of a replicated batch -> global (R, B, ...) arrays.

  ``local_batch`` values are (R_p, B_p, ...): the replicas and examples of
  ``process_indices(replica_batch_sharded(mesh), (R, B))`` (all of them in one process).
  """
  sharding = replica_batch_sharded(mesh)
  r, b = global_shape_prefix
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                    (r, b) + np.shape(v)[2:])
          for k, v in local_batch.items()}
