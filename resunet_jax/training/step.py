"""The train and validation steps: written per device, run data-parallel with ``jax.shard_map``.

The per-device step sees ``global_batch / num_devices`` examples. Like ``pmap`` it averages the loss
and the gradients over the device axis with ``lax.pmean`` and the model's BatchNorm layers average
their batch statistics over the same axis (``Separator.bn_axis_name``), so every device holds the
global-batch mean gradient and the statistics of the whole global batch -- the authors'
synchronised BatchNorm (REFERENCE §4.8). Parameters, BN running statistics and the optimiser state
are replicated; the batch is split over the 1-D device mesh axis ``"data"``, which spans every
device of every process.
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


def empty_metrics(mesh) -> TrainMetrics:
  """A fresh ``TrainMetrics``, replicated over ``mesh`` (a global array on every process)."""
  return jax.tree_util.tree_map(
      lambda x: global_array_from_host(mesh, np.asarray(x), P()), TrainMetrics.empty())
