"""The training state: everything an interrupted run needs to continue bit-exactly.

``TrainState`` holds the update counter, the model variables (``params`` trained, ``batch_stats``
updated by the forward pass, ``constants`` -- the PQMF filters of subband models -- carried along
unchanged), the optimiser state and the base RNG key. The key of update ``n`` is
``fold_in(rng, n)``: resuming at step n reproduces the keys an uninterrupted run would have used.
The data position is the step itself (``train_batches(start_step=step)``).
"""
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from resunet_jax import models


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimiser updates applied so far
  params: Any
  batch_stats: Any
  constants: Any  # {} for models without PQMF subbands
  opt_state: optax.OptState
  rng: jax.Array  # uint32[2]: raw key data of the base key (see the module docstring)

  def variables(self):
    """The model variables as ``model.apply`` takes them."""
    out = {"params": self.params, "batch_stats": self.batch_stats}
    if self.constants:
      out["constants"] = self.constants
    return out


def split_variables(variables):
  """(params, batch_stats, constants) of a ``{"params", "batch_stats"[, "constants"]}`` dict."""
  unknown = set(variables) - {"params", "batch_stats", "constants"}
  if unknown:
    raise ValueError(f"unexpected variable collections {sorted(unknown)}")
  return (variables["params"], variables.get("batch_stats", {}),
          variables.get("constants", {}))


def base_keys(seed: int):
  """(init key, base key of the per-step RNG) for a config seed."""
  root = jax.random.key(seed)
  return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def create_train_state(model: models.Separator, tx: optax.GradientTransformation, seed: int,
                       variables: Optional[dict] = None) -> TrainState:
  """A fresh state (step 0): ``variables`` if given (fine-tuning), else a new initialisation."""
  init_key, step_key = base_keys(seed)
  if variables is None:
    variables = model.init(init_key, jnp.zeros((1, _init_length(model), model.audio_channels),
                                               jnp.float32), train=False)
  params, batch_stats, constants = split_variables(variables)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, model.param_dtype), params)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                    constants=constants, opt_state=tx.init(params),
                    rng=jax.random.key_data(step_key))


def init_train_state(model: models.Separator, tx: optax.GradientTransformation, seed: int,
                     variables: Optional[dict] = None, sharding=None) -> TrainState:
  """``create_train_state`` compiled (onto ``sharding``, e.g. replicated over a mesh).

  On CPU it is compiled without LLVM optimisations: it runs once, and the ~50 threefry expansions
  of a ResUNet's initialisers otherwise take tens of seconds to optimise (measured 48 s -> 7 s for
  the smoke model on 2 cores).
  """
  options = None
  if jax.default_backend() == "cpu":
    options = {"xla_backend_optimization_level": 0}
  make = jax.jit(lambda v: create_train_state(model, tx, seed, v), out_shardings=sharding,
                 compiler_options=options)
  return make(variables)


def create_replicated_train_state(model: models.Separator, tx: optax.GradientTransformation,
                                  seeds, variables: Optional[dict] = None) -> TrainState:
  """R fresh states stacked on a leading axis (all leaves but ``step``): replica k is
  ``create_train_state(model, tx, seeds[k], variables)`` -- its own initialisation (or the same
  ``variables`` for all) and its own RNG key."""
  seeds = jnp.asarray(seeds, jnp.int32)

  def one(seed):
    return create_train_state(model, tx, seed, variables).replace(step=None)

  return jax.vmap(one)(seeds).replace(step=jnp.zeros([], jnp.int32))


def init_replicated_train_state(model: models.Separator, tx: optax.GradientTransformation, seeds,
                                variables: Optional[dict] = None, shardings=None) -> TrainState:
  """``create_replicated_train_state`` compiled onto ``shardings`` (a state-shaped tree of
  shardings, e.g. ``step.replica_state_shardings``), as ``init_train_state``."""
  options = None
  if jax.default_backend() == "cpu":
    options = {"xla_backend_optimization_level": 0}
  seeds = tuple(int(s) for s in seeds)
  make = jax.jit(lambda v: create_replicated_train_state(model, tx, seeds, v),
                 out_shardings=shardings, compiler_options=options)
  return make(variables)


def _init_length(model):
  return 2 * model.hop * model.time_multiple * max(model.subbands, 1)
