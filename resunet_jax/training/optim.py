"""Optimiser and learning-rate schedule of the authors' recipe (REFERENCE §6.1, §13).

``pytorch_amsgrad`` is ``torch.optim.Adam(amsgrad=True)`` as an optax transformation. It differs from
``optax.amsgrad``: PyTorch keeps the running maximum of the *raw* second moment v (not of the
bias-corrected one) and divides that maximum by the *current* step's bias correction:

  m     <- b1 m + (1 - b1) g                  (PyTorch: m.lerp_(g, 1 - b1))
  v     <- b2 v + (1 - b2) g^2
  v_max <- max(v_max, v)
  p     <- p - lr / (1 - b1^t) * m / (sqrt(v_max) / sqrt(1 - b2^t) + eps)     t = 1, 2, ...

``lambda_lr_schedule`` is the authors' LambdaLR, stepped after every optimiser update:
lr(n) = base_lr * factor(n) for the n-th update (n = 0, 1, ...), where
factor(n) = n / warm_up_steps for n <= warm_up_steps, else decay_rate ** floor(n / decay_steps).
So the very first update uses lr 0 (it still moves the Adam moments and the BN statistics).

``warmup_cosine`` and ``warmup_linear`` are for short runs whose schedule should fit their length
(e.g. ``configs/small.py``): the same linear warm-up, then a cosine (linear) decay from base_lr at
update ``warm_up_steps`` to ``end_factor * base_lr`` at update ``decay_steps`` (held after it):

  factor(n) = n / warm_up_steps                                          n <= warm_up_steps
            = e + (1 - e) (1 + cos(pi p)) / 2     (cosine)   or   1 - (1 - e) p     (linear)
  with p = min((n - warm_up_steps) / (decay_steps - warm_up_steps), 1),  e = end_factor.
"""
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, optax.Schedule]


def lambda_lr_factor(step, warm_up_steps=1000, decay_steps=15000, decay_rate=0.9):
  """The LambdaLR factor of update ``step`` (0-based); works on Python ints and JAX scalars."""
  step = jnp.asarray(step)
  dtype = jnp.result_type(float)  # float32, or float64 where JAX runs with x64 enabled
  warm = step.astype(dtype) / max(warm_up_steps, 1)
  decay = jnp.asarray(decay_rate, dtype) ** (step // decay_steps).astype(dtype)
  if warm_up_steps <= 0:
    return decay
  return jnp.where(step <= warm_up_steps, warm, decay)


def lambda_lr_schedule(learning_rate, warm_up_steps=1000, decay_steps=15000, decay_rate=0.9):
  """optax schedule: count (number of updates already applied) -> learning rate."""
  def schedule(count):
    return learning_rate * lambda_lr_factor(count, warm_up_steps, decay_steps, decay_rate)
  return schedule


DECAY_SHAPES = ("cosine", "linear")


def warmup_decay_schedule(learning_rate, warm_up_steps, decay_steps, end_factor=0.0,
                          shape="cosine") -> optax.Schedule:
  """The ``warmup_cosine`` / ``warmup_linear`` schedule (see the module doc), from optax's own."""
  if shape not in DECAY_SHAPES:
    raise ValueError(f"decay shape {shape!r}: expected one of {DECAY_SHAPES}")
  if decay_steps <= warm_up_steps:
    raise ValueError(f"decay_steps ({decay_steps}) must be larger than warm_up_steps "
                     f"({warm_up_steps})")
  end_value = end_factor * learning_rate
  if shape == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warm_up_steps, decay_steps,
                                              end_value=end_value)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warm_up_steps),
       optax.linear_schedule(learning_rate, end_value, decay_steps - warm_up_steps)],
      [warm_up_steps])


class PyTorchAmsgradState(NamedTuple):
  count: jax.Array  # number of updates applied so far (PyTorch's ``step`` before this update)
  mu: optax.Updates  # exp_avg
  nu: optax.Updates  # exp_avg_sq
  nu_max: optax.Updates  # max_exp_avg_sq


def scale_by_pytorch_amsgrad(b1=0.9, b2=0.999, eps=1e-8):
  """The Adam/AMSGrad direction of PyTorch, *not* yet multiplied by -lr (see the module doc)."""

  def init_fn(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
    return PyTorchAmsgradState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(),
                               nu_max=zeros())

  def update_fn(updates, state, params=None):
    del params
    t = state.count + 1
    mu = jax.tree_util.tree_map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state.nu, updates)
    nu_max = jax.tree_util.tree_map(jnp.maximum, state.nu_max, nu)

    def direction(m, vm):
      # The bias corrections in the moments' own dtype (float64 parameters: float64 corrections,
      # as PyTorch computes them in double precision).
      dtype = jnp.promote_types(m.dtype, jnp.float32)
      t_ = t.astype(dtype)
      correction1 = 1 - jnp.asarray(b1, dtype) ** t_
      correction2_sqrt = jnp.sqrt(1 - jnp.asarray(b2, dtype) ** t_)
      return (m / correction1) / (jnp.sqrt(vm) / correction2_sqrt + eps)

    direction = jax.tree_util.tree_map(direction, mu, nu_max)
    return direction, PyTorchAmsgradState(count=t, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def pytorch_amsgrad(learning_rate: ScalarOrSchedule, b1=0.9, b2=0.999, eps=1e-8,
                    weight_decay=0.0):
  """``torch.optim.Adam(params, lr, betas=(b1, b2), eps, weight_decay, amsgrad=True)``.

  A schedule is called with the number of updates already applied (0 for the first update), as
  ``LambdaLR`` stepped after every ``optimizer.step()`` does. ``weight_decay`` is PyTorch's L2
  term added to the gradient (0 in the paper).
  """
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts += [scale_by_pytorch_amsgrad(b1, b2, eps), optax.scale_by_learning_rate(learning_rate)]
  return optax.chain(*parts)


SCHEDULES = ("lambda_lr", "constant", "warmup_cosine", "warmup_linear")


def make_schedule(config) -> optax.Schedule:
  """``config.schedule`` as an optax schedule of the update count (see the module doc)."""
  opt, sched = config.optimizer, config.schedule
  if sched.name == "lambda_lr":
    return lambda_lr_schedule(opt.learning_rate, sched.warm_up_steps, sched.decay_steps,
                              sched.decay_rate)
  if sched.name == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if sched.name in ("warmup_cosine", "warmup_linear"):
    shape = sched.name.split("_", 1)[1]
    return warmup_decay_schedule(opt.learning_rate, sched.warm_up_steps, sched.decay_steps,
                                 sched.get("end_factor", 0.0), shape)
  raise ValueError(f"config.schedule.name: unknown schedule {sched.name!r}; expected one of "
                   f"{SCHEDULES}")


def make_optimizer(config) -> optax.GradientTransformation:
  """The optimiser of ``config.optimizer`` with the schedule of ``config.schedule``.

  ``optimizer.name``: "pytorch_amsgrad" (the paper), "optax_amsgrad" (``optax.amsgrad``: max of the
  bias-corrected second moment), "adam", or "sgd" (plain SGD; b1, b2, eps unused).
  """
  opt = config.optimizer
  lr = make_schedule(config)
  if opt.name == "pytorch_amsgrad":
    return pytorch_amsgrad(lr, opt.b1, opt.b2, opt.eps, opt.weight_decay)
  if opt.name == "sgd":  # plain SGD (tests, debugging)
    return optax.chain(*([optax.add_decayed_weights(opt.weight_decay)] if opt.weight_decay else []),
                       optax.sgd(lr))
  if opt.name in ("optax_amsgrad", "adam"):
    fn = optax.amsgrad if opt.name == "optax_amsgrad" else optax.adam
    tx = fn(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    if opt.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(opt.weight_decay), tx)
    return tx
  raise ValueError(f"config.optimizer.name: unknown optimiser {opt.name!r}; expected "
                   "'pytorch_amsgrad', 'optax_amsgrad', 'adam' or 'sgd'")
