"""``train_and_evaluate(config, workdir)``: the training loop of ``train.py``, importable anywhere.

One run = one work directory. Starting again with the same ``workdir`` resumes from its latest
checkpoint: parameters, BN statistics, optimiser state, step and RNG come from the checkpoint, and
the data pipeline restarts at that step (example k of step n is a pure function of (seed, n, k)), so
an interrupted run ends with exactly the parameters of an uninterrupted one.

Step numbering. ``state.step`` counts optimiser updates: checkpoint ``<n>`` holds the weights after
n updates, and update n (0-based) uses lr(n) and the n-th global batch. The authors' Lightning
files ``step=n.pth`` hold the weights after n + 1 updates (callbacks run before ``global_step``
increments, REFERENCE §13): their ``step=n.pth`` is our step n + 1, and their evaluation "at step n"
sees our step n + 1. ``num_train_steps = 500001`` reproduces their ``max_steps``.
"""
import json
import math
import os
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resunet_jax import checkpoint as model_checkpoint
from resunet_jax import models
from resunet_jax.training import checkpointing
from resunet_jax.training import inputs
from resunet_jax.training import optim
from resunet_jax.training import state as state_lib
from resunet_jax.training import step as step_lib


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN/inf; the run stopped without saving that state."""


# ------------------------------------------------------------------------------------------------
# Config checks (before anything expensive starts).


def check_config(config) -> None:
  """Raises ValueError naming the offending key when a value cannot work."""
  def fail(key, msg):
    raise ValueError(f"config.{key}: {msg}")

  try:
    build_model(config)
  except models.ModelFieldError as e:
    key = "model.arch" if e.field == "arch" else f"model.{e.field}"
    fail(key, str(e).split(": ", 1)[1])
  if config.loss not in step_lib.LOSSES:
    fail("loss", f"unknown loss {config.loss!r}; expected one of {sorted(step_lib.LOSSES)}")
  if config.optimizer.name not in ("pytorch_amsgrad", "optax_amsgrad", "adam", "sgd"):
    fail("optimizer.name", f"unknown optimiser {config.optimizer.name!r}")
  if config.schedule.name not in ("lambda_lr", "constant"):
    fail("schedule.name", f"unknown schedule {config.schedule.name!r}")
  if config.data.name not in ("musdb18", "random"):
    fail("data.name", f"{config.data.name!r} is not 'musdb18' or 'random'")
  if not config.data.segment_seconds > 0:
    fail("data.segment_seconds", f"must be positive, got {config.data.segment_seconds}")
  if not config.data.target_sources:
    fail("data.target_sources", "is empty")
  for key in ("global_batch_size",):
    if config[key] < 1:
      fail(key, f"must be >= 1, got {config[key]}")
  for key in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps", "num_devices"):
    if config[key] < 0:
      fail(key, f"must be >= 0, got {config[key]}")
  if config.log_every_steps < 1:
    fail("log_every_steps", f"must be >= 1, got {config.log_every_steps}")
  if config.keep_checkpoints < 1:
    fail("keep_checkpoints", f"must be >= 1, got {config.keep_checkpoints}")
  if config.validation.num_segments < 0 or config.validation.batch_size < 1:
    fail("validation", "num_segments must be >= 0 and batch_size >= 1")


def build_model(config) -> models.Separator:
  """The Separator of ``config.model``, one output per ``config.data.target_sources``."""
  return models.build_model(num_sources=len(config.data.target_sources), **config.model)


def select_devices(config):
  devices = jax.devices()
  n = config.num_devices
  if not n:
    return devices
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config.num_devices={n}: a subset of devices is only supported in a single "
                     f"process (this run has {jax.process_count()} processes)")
  if n > len(devices):
    raise ValueError(f"config.num_devices={n}, but only {len(devices)} devices are visible")
  return devices[:n]


# ------------------------------------------------------------------------------------------------
# Initial state: checkpoint, --init_from, or fresh.


def _abstract(tree, sharding):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def _check_same_structure(loaded, expected, what):
  flat_l = {jax.tree_util.keystr(p): np.shape(v)
            for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  flat_e = {jax.tree_util.keystr(p): np.shape(v)
            for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  problems = [f"missing {k}" for k in sorted(set(flat_e) - set(flat_l))]
  problems += [f"unexpected {k}" for k in sorted(set(flat_l) - set(flat_e))]
  problems += [f"{k}: {flat_l[k]} vs {flat_e[k]}" for k in sorted(set(flat_l) & set(flat_e))
               if flat_l[k] != flat_e[k]]
  if problems:
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
    raise ValueError(f"{what} does not fit the configured model: {shown}")


def load_init_variables(init_from: str, model, config):
  """Variables of a converted bytesep checkpoint (model directory) or a training work directory."""
  path = os.path.abspath(os.path.expanduser(init_from))
  if not os.path.exists(path):
    raise FileNotFoundError(f"--init_from: {path} does not exist")
  try:
    _, variables, desc = model_checkpoint.load_model(path)
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"--init_from: {path} is not a model directory or training work directory "
                     f"({e})") from e
  sources = list(desc.get("sources") or [])
  if sources and sources != list(config.data.target_sources):
    raise ValueError(f"--init_from: {path} separates {sources}, but config.data.target_sources is "
                     f"{list(config.data.target_sources)}")
  expected = jax.eval_shape(lambda: state_lib.create_train_state(
      model, optim.make_optimizer(config), config.seed).variables())
  _check_same_structure(variables, expected, f"--init_from {path}")
  logging.info("Initialised from %s (%s).", path, desc.get("arch"))
  return jax.tree_util.tree_map(np.asarray, variables)  # host arrays, laid out onto the mesh later


def initial_state(config, model, tx, mesh, ckpts, init_from: Optional[str]):
  """(state on the mesh, resumed-from step or None)."""
  rep = step_lib.replicated(mesh)
  shapes = jax.eval_shape(lambda: state_lib.create_train_state(model, tx, config.seed))
  abstract = _abstract(shapes, rep)
  latest = ckpts.latest_step()
  if latest is not None:
    if init_from:
      logging.warning("Resuming %s at step %d; --init_from %s is ignored.", ckpts.directory,
                      latest, init_from)
    state, meta = ckpts.restore(latest, abstract)
    if int(meta["data"]["start_step"]) != latest or int(meta["seed"]) != config.seed:
      raise ValueError(f"checkpoint {latest} was written with seed {meta['seed']} and data "
                       f"position {meta['data']['start_step']}; config.seed is {config.seed}")
    return state, latest
  variables = None
  if init_from:
    variables = load_init_variables(init_from, model, config)
  return state_lib.init_train_state(model, tx, config.seed, variables, rep), None


# ------------------------------------------------------------------------------------------------
# Validation.


class Validator:
  """SDR of the model on the fixed validation segments (+ audio examples)."""

  def __init__(self, config, mesh, model):
    self.config = config
    self.mesh = mesh
    self.sources = list(config.data.target_sources)
    data = inputs.validation_segments(config)
    self.mixture, self.targets = data["mixture"], data["targets"]
    n_dev = mesh.devices.size
    self.batch = int(math.ceil(min(config.validation.batch_size, len(self.mixture)) / n_dev)) * n_dev
    window = int(round(config.validation.window_seconds * inputs.SAMPLE_RATE))
    self.eval_step = step_lib.make_eval_step(mesh, model, window)
    self.audio_written = False

  def __call__(self, state):
    """({metric: value}, {audio key: (N, L, 2)})."""
    n = len(self.mixture)
    sdrs, estimates = [], []
    n_audio = min(self.config.validation.audio_examples, n)
    for start in range(0, n, self.batch):
      mix = self.mixture[start:start + self.batch]
      tgt = self.targets[start:start + self.batch]
      pad = self.batch - len(mix)
      if pad:
        mix = np.concatenate([mix, np.zeros((pad,) + mix.shape[1:], mix.dtype)])
        tgt = np.concatenate([tgt, np.zeros((pad,) + tgt.shape[1:], tgt.dtype)])
      est, sdr = self.eval_step(state.variables(),
                                step_lib.global_array_from_host(self.mesh, mix),
                                step_lib.global_array_from_host(self.mesh, tgt))
      sdrs.append(step_lib.to_host(sdr)[:self.batch - pad])
      if start < n_audio:
        estimates.append(step_lib.to_host(est)[:n_audio - start])
    sdr = np.concatenate(sdrs)  # (N, S)
    per_source = np.nanmedian(sdr, axis=0) if np.isfinite(sdr).any() else np.full(len(self.sources), np.nan)
    metrics = {f"val/sdr_{s}": float(v) for s, v in zip(self.sources, per_source)}
    metrics["val/sdr"] = float(np.mean(per_source))
    audio = {}
    if n_audio:
      est = np.concatenate(estimates)  # (n_audio, S, L, 2)
      for i, s in enumerate(self.sources):
        audio[f"val/estimate_{s}"] = np.clip(est[:, i], -1, 1)
      if not self.audio_written:
        audio["val/mixture"] = np.clip(self.mixture[:n_audio], -1, 1)
        for i, s in enumerate(self.sources):
          audio[f"val/reference_{s}"] = np.clip(self.targets[:n_audio, i], -1, 1)
        self.audio_written = True
    return metrics, audio


# ------------------------------------------------------------------------------------------------
# The loop.


class _LoggingOnlyWriter:
  """Console metrics when clu.metric_writers cannot be imported (it needs ``tensorboard``)."""

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

  def write_audios(self, step, audios, *, sample_rate):
    del sample_rate
    logging.info("[%d] audio %s (not written: no tensorboard)", step, sorted(audios))

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir: str, just_logging: bool):
  """clu's default writer: TensorBoard event files in ``workdir`` plus console (process 0)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning("clu.metric_writers unavailable (%s): metrics go to the log only. "
                    "`pip install tensorboard` for TensorBoard files.", e)
    return _LoggingOnlyWriter()
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def use_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache in ``path`` (also when JAX already checked for one)."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  if jax.config.jax_compilation_cache_dir != path:
    compilation_cache.set_cache_dir(path)
    compilation_cache.reset_cache()


def _prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"--workdir: the parent directory {parent} does not exist")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir: {workdir} exists and is not a directory")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def _log_config_changes(workdir, config):
  old = checkpointing.read_config(workdir)
  if old is None:
    return
  new = json.loads(config.to_json_best_effort())
  changed = sorted(k for k in set(_flatten(old)) | set(_flatten(new))
                   if _flatten(old).get(k) != _flatten(new).get(k))
  if changed:
    logging.warning("Config differs from the one this work directory was started with in: %s",
                    ", ".join(changed))


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _model_description(config, model, step):
  return models.describe(model, arch=config.model.arch, sources=list(config.data.target_sources),
                         metadata={"trained_steps": step, "config_model": config.model.to_dict()})


def _checkpoint_meta(config, step, validation=None):
  return {
      "step": step,
      "seed": config.seed,
      "data": {"start_step": step, "name": config.data.name,
               "global_batch_size": config.global_batch_size},
      "validation": validation,
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       init_from: Optional[str] = None) -> state_lib.TrainState:
  """Trains (or resumes) the run in ``workdir``; returns the final state.

  Returns early -- after saving a checkpoint -- when SIGTERM arrives. Raises NonFiniteLossError when
  the loss or gradient norm is not finite (the last good checkpoint stays the latest).
  """
  check_config(config)
  workdir = _prepare_workdir(workdir)
  if init_from:
    if not os.path.exists(os.path.expanduser(init_from)):
      raise FileNotFoundError(f"--init_from: {init_from} does not exist")
    if not model_checkpoint.is_loadable(init_from):
      raise ValueError(f"--init_from: {init_from} is not a model directory (no "
                       f"{model_checkpoint.MODEL_JSON}), a training work directory (no "
                       f"{checkpointing.CHECKPOINT_DIR}/) or a checkpoint step directory")
  if config.compilation_cache_dir:
    use_compilation_cache(config.compilation_cache_dir)

  process_index, process_count = jax.process_index(), jax.process_count()
  mesh = step_lib.make_mesh(select_devices(config))
  n_dev = mesh.devices.size
  if config.global_batch_size % n_dev:
    raise ValueError(f"config.global_batch_size={config.global_batch_size} is not divisible by the "
                     f"{n_dev} devices of the mesh")
  logging.info("Mesh: %d devices (%s) in %d process(es); per-device batch %d.", n_dev,
               jax.devices()[0].platform, process_count, config.global_batch_size // n_dev)

  model = build_model(config)
  tx = optim.make_optimizer(config)
  lr_fn = optim.make_schedule(config)

  if process_index == 0:
    _log_config_changes(workdir, config)
    checkpointing.write_config(workdir, config)
  writer = create_writer(workdir, just_logging=process_index > 0)
  ckpts = checkpointing.TrainCheckpoints(workdir, keep=config.keep_checkpoints,
                                         keep_best=config.keep_best_checkpoint,
                                         asynchronous=config.async_checkpoints)
  try:
    state, resumed = initial_state(config, model, tx, mesh, ckpts, init_from)
    step = int(step_lib.to_host(state.step))
    if resumed is not None:
      logging.info("Resumed from %s at step %d.", ckpts.directory, step)
    else:
      writer.write_hparams(_flatten(json.loads(config.to_json_best_effort())))
      logging.info("Model %s: %s trainable parameters.", config.model.arch,
                   f"{models.count_params(state.params):,}")

    train_step = step_lib.make_train_step(mesh, model, tx, lr_fn, step_lib.LOSSES[config.loss])
    batches = inputs.train_batches(config, start_step=step, process_index=process_index,
                                   process_count=process_count)
    validator = None
    if config.eval_every_steps and config.validation.num_segments:
      validator = Validator(config, mesh, model)

    with checkpointing.PreemptionGuard() as guard:
      state = _run(config, state, step, train_step, batches, mesh, model, ckpts, writer,
                   validator, guard)
    return state
  finally:
    ckpts.wait_until_finished()
    ckpts.close()
    writer.flush()
    writer.close()


def _preemption_requested(guard) -> bool:
  """SIGTERM seen by any process (all processes must stop at the same step)."""
  flag = guard.requested
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flag = bool(np.any(multihost_utils.process_allgather(np.array([flag]))))
  return flag


def _run(config, state, step, train_step, batches, mesh, model, ckpts, writer,
         validator, guard):
  total = config.num_train_steps
  examples_per_step = config.global_batch_size
  window = {"loss": [], "grad_norm": [], "time": 0.0, "steps": 0}
  start_step, start_time = step, time.time()

  while step < total:
    t0 = time.time()
    batch = step_lib.global_batch(mesh, next(batches))
    new_state, metrics = train_step(state, batch)
    metrics = {k: float(step_lib.to_host(v)) for k, v in metrics.items()}
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
      raise NonFiniteLossError(
          f"non-finite loss {metrics['loss']} (gradient norm {metrics['grad_norm']}) at update "
          f"{step + 1}; stopped without saving it. The last good checkpoint is step "
          f"{ckpts.latest_step()} in {ckpts.directory}; lower optimizer.learning_rate or check the "
          "data, then restart with the same --workdir to resume from it.")
    state, step = new_state, step + 1
    if step == start_step + 1:  # includes compiling the step: reported, not averaged in
      logging.info("First step (with compilation) took %.1f s.", time.time() - t0)
    else:
      window["time"] += time.time() - t0
      window["steps"] += 1
    window["loss"].append(metrics["loss"])
    window["grad_norm"].append(metrics["grad_norm"])

    if step % config.log_every_steps == 0 or step == total:
      scalars = {"train/loss": float(np.mean(window["loss"])),
                 "train/grad_norm": float(np.mean(window["grad_norm"])),
                 "train/learning_rate": metrics["learning_rate"]}
      speed = "first step"
      if window["steps"]:  # steps/s without the compilation of the first step
        sps = window["steps"] / max(window["time"], 1e-9)
        scalars.update({"train/steps_per_sec": sps,
                        "train/examples_per_sec": sps * examples_per_step})
        speed = f"{sps:.2f} steps/s, {sps * examples_per_step:.1f} examples/s"
      writer.write_scalars(step, scalars)
      elapsed = time.time() - start_time
      eta = (total - step) * elapsed / max(step - start_step, 1)
      logging.info("step %d/%d (%.1f%%) | loss %.5f | lr %.3g | grad norm %.3g | %s | ETA %s",
                   step, total, 100.0 * step / max(total, 1), scalars["train/loss"],
                   metrics["learning_rate"], scalars["train/grad_norm"], speed, _hms(eta))
      window = {"loss": [], "grad_norm": [], "time": 0.0, "steps": 0}

    validation = None
    if validator is not None and (step % config.eval_every_steps == 0 or step == total):
      t = time.time()
      validation, audio = validator(state)
      writer.write_scalars(step, validation)
      if audio:
        writer.write_audios(step, audio, sample_rate=inputs.SAMPLE_RATE)
      logging.info("step %d validation: %s (%.1f s)", step,
                   ", ".join(f"{k} {v:.3f} dB" for k, v in validation.items()), time.time() - t)

    preempted = _preemption_requested(guard)
    if (step % max(config.checkpoint_every_steps, 1) == 0 and config.checkpoint_every_steps) \
        or step == total or preempted or validation is not None:
      metrics_for_best = None
      if validation is not None:
        metrics_for_best = {checkpointing.BEST_METRIC: validation["val/sdr"]}
      ckpts.save(state, _checkpoint_meta(config, step, validation), metrics_for_best,
                 model_description=_model_description(config, model, step))
    if preempted:
      logging.warning("SIGTERM: saved a checkpoint at step %d in %s; stopping. Restart with the "
                      "same --workdir to resume.", step, ckpts.directory)
      break
  return state


def _hms(seconds):
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

