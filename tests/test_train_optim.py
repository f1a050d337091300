"""The optimiser and LR schedule reproduce the authors' PyTorch recipe (REFERENCE §6.1, §13)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from resunet_jax.training import optim


def _config(**opt):
  return ml_collections.ConfigDict(dict(
      optimizer=dict(dict(name="pytorch_amsgrad", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=0.0), **opt),
      schedule=dict(name="lambda_lr", warm_up_steps=1000, decay_steps=15000, decay_rate=0.9)))


# (update index, lr) listed in REFERENCE §6.1: lr = 1e-3 x factor(step).
LISTED_LR = [(0, 0.0), (1, 1e-6), (500, 5e-4), (999, 9.99e-4), (1000, 1e-3), (1001, 1e-3),
             (14_999, 1e-3), (15_000, 9e-4), (29_999, 9e-4), (30_000, 8.1e-4),
             (100_000, 5.31441e-4), (300_000, 1.2157665e-4), (350_000, 8.8629e-5),
             (500_000, 3.0903e-5)]


@pytest.mark.parametrize("step,lr", LISTED_LR)
def test_lambda_lr_schedule_matches_listed_values(step, lr):
  schedule = optim.make_schedule(_config())
  np.testing.assert_allclose(float(schedule(step)), lr, rtol=2e-5, atol=1e-12)


def test_first_update_uses_lr_zero_and_moves_only_the_moments():
  tx = optim.make_optimizer(_config())
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.array([0.5, 0.25])}, state, params)
  np.testing.assert_array_equal(np.asarray(updates["w"]), [0.0, 0.0])
  amsgrad_state = state[0]
  np.testing.assert_allclose(np.asarray(amsgrad_state.mu["w"]), [0.05, 0.025], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(amsgrad_state.nu_max["w"]), [2.5e-4, 6.25e-5], rtol=1e-6)


def _hand_amsgrad(grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, p0=1.0):
  """The PyTorch update written out in float64 (REFERENCE §6.1)."""
  p, m, v, vmax, out = p0, 0.0, 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    vmax = max(vmax, v)
    denom = np.sqrt(vmax) / np.sqrt(1 - b2 ** t) + eps
    p = p - lr / (1 - b1 ** t) * m / denom
    out.append(p)
  return out


def test_pytorch_amsgrad_matches_hand_computed_values():
  # A large gradient first, then small ones: v_max keeps the raw maximum of step 1 while the bias
  # correction keeps changing -- where PyTorch and optax.amsgrad part ways.
  grads = [3.0, 0.1, -0.2, 0.05, 0.3]
  expected = _hand_amsgrad(grads)
  # The hand computation itself, step 1: m = 0.3, v = v_max = 0.009, p = 1 - 0.01 * 3 / (3 + 1e-8).
  np.testing.assert_allclose(expected[0], 1 - 0.01 * 3.0 / (3.0 + 1e-8), rtol=1e-12)
  tx = optim.pytorch_amsgrad(1e-2)
  params = jnp.array(1.0)
  state = tx.init(params)
  got = []
  for g in grads:
    updates, state = tx.update(jnp.array(g), state, params)
    params = optax.apply_updates(params, updates)
    got.append(float(params))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # optax.amsgrad (max of the bias-corrected moment) gives a different trajectory.
  tx2 = optax.amsgrad(1e-2)
  p2, s2 = jnp.array(1.0), tx2.init(jnp.array(1.0))
  for g in grads:
    u, s2 = tx2.update(jnp.array(g), s2, p2)
    p2 = optax.apply_updates(p2, u)
  assert abs(float(p2) - expected[-1]) > 1e-4


def test_pytorch_amsgrad_matches_torch_adam_with_lambda_lr():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  shapes = {"a": (3, 4), "b": (5,)}
  init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  warm, decay_steps, decay_rate, base_lr, steps = 4, 7, 0.5, 1e-2, 20
  grads = [{k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32)
            for k, s in shapes.items()} for _ in range(steps)]

  tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  opt = torch.optim.Adam(list(tparams.values()), lr=base_lr, betas=(0.9, 0.999), eps=1e-8,
                         weight_decay=0.0, amsgrad=True)

  def factor(step):  # the authors' lr_lambda
    return step / warm if step <= warm else decay_rate ** (step // decay_steps)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

  config = _config(learning_rate=base_lr)
  config.schedule.update(warm_up_steps=warm, decay_steps=decay_steps, decay_rate=decay_rate)
  tx = optim.make_optimizer(config)
  params = {k: jnp.asarray(v) for k, v in init.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    for k, p in tparams.items():
      p.grad = torch.tensor(g[k])
    opt.step()
    sched.step()
    updates, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, updates)

  for k, p in tparams.items():
    torch_state = opt.state[p]
    np.testing.assert_allclose(np.asarray(params[k]), p.detach().numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state[0].mu[k]), torch_state["exp_avg"].numpy(),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(state[0].nu[k]), torch_state["exp_avg_sq"].numpy(),
                               rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state[0].nu_max[k]),
                               torch_state["max_exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-12)
  assert int(state[0].count) == steps == int(opt.state[tparams["a"]]["step"])
  # The parameters did move (lr 0 only at the very first update).
  assert not np.allclose(np.asarray(params["a"]), init["a"])


def test_unknown_optimizer_and_schedule_name_the_key():
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optim.make_optimizer(_config(name="lamb"))
  config = _config()
  config.schedule.name = "cosine"
  with pytest.raises(ValueError, match="config.schedule.name"):
    optim.make_optimizer(config)


def _short_config(name, **sched):
  config = _config()
  config.schedule = ml_collections.ConfigDict(dict(dict(
      name=name, warm_up_steps=100, decay_steps=1100, decay_rate=0.9, end_factor=0.0), **sched))
  return config


# (update index, factor) of a 100-update warm-up and a decay to `end` at update 1100.
@pytest.mark.parametrize("name,end,points", [
    ("warmup_cosine", 0.0, [(0, 0.0), (50, 0.5), (100, 1.0), (350, 0.5 * (1 + np.cos(np.pi / 4))),
                            (600, 0.5), (1100, 0.0), (5000, 0.0)]),
    ("warmup_cosine", 0.1, [(100, 1.0), (600, 0.55), (1100, 0.1), (2000, 0.1)]),
    ("warmup_linear", 0.0, [(0, 0.0), (100, 1.0), (350, 0.75), (600, 0.5), (1100, 0.0),
                            (1200, 0.0)]),
    ("warmup_linear", 0.2, [(600, 0.6), (1100, 0.2)]),
])
def test_warmup_decay_schedules(name, end, points):
  schedule = optim.make_schedule(_short_config(name, end_factor=end))
  for step, factor in points:
    np.testing.assert_allclose(float(schedule(step)), 1e-3 * factor, rtol=1e-5, atol=1e-12,
                               err_msg=f"{name} step {step}")
  # Monotone after the warm-up, and jit-able with a traced step.
  lrs = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(100, 1300)))
  assert np.all(np.diff(lrs) <= 1e-12)


def test_warmup_decay_schedule_checks():
  with pytest.raises(ValueError, match="decay_steps"):
    optim.make_schedule(_short_config("warmup_cosine", decay_steps=100))(0)
  with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
    optim.make_schedule(_short_config("cosine"))
  # end_factor is optional (default 0): a config without the key still works.
  config = _short_config("warmup_linear")
  del config.schedule["end_factor"]
  np.testing.assert_allclose(float(optim.make_schedule(config)(1100)), 0.0, atol=1e-12)


def test_training_config_check_knows_the_schedules():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.schedule.name = "warmup_cosine"
  config.schedule.warm_up_steps, config.schedule.decay_steps = 10, 100
  loop.check_config(config)
  config.schedule.decay_steps = 10
  with pytest.raises(ValueError, match=r"config.schedule.decay_steps: must be larger"):
    loop.check_config(config)
  config.schedule.name = "cosine"
  with pytest.raises(ValueError, match=r"config.schedule.name: unknown schedule 'cosine'"):
    loop.check_config(config)
