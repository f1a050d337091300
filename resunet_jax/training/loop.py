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
import collections
import contextlib
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
from resunet_jax import fileutil
from resunet_jax import models
from resunet_jax.training import checkpointing
from resunet_jax.training import distributed
from resunet_jax.training import history
from resunet_jax.training import inputs
from resunet_jax.training import optim
from resunet_jax.training import program as program_lib
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
  if config.schedule.name not in optim.SCHEDULES:
    fail("schedule.name", f"unknown schedule {config.schedule.name!r}; expected one of "
         f"{optim.SCHEDULES}")
  if (config.schedule.name.startswith("warmup_")
      and not config.schedule.decay_steps > config.schedule.warm_up_steps):
    fail("schedule.decay_steps", f"must be larger than schedule.warm_up_steps "
         f"({config.schedule.warm_up_steps}), got {config.schedule.decay_steps}")
  if config.data.name not in ("musdb18", "random"):
    fail("data.name", f"{config.data.name!r} is not 'musdb18' or 'random'")
  if not config.data.segment_seconds > 0:
    fail("data.segment_seconds", f"must be positive, got {config.data.segment_seconds}")
  if not config.data.target_sources:
    fail("data.target_sources", "is empty")
  if config.data.get("cache_dir") and fileutil.is_url(config.data.cache_dir):
    from resunet_jax.data import prepare  # pylint: disable=g-import-not-at-top
    prepare.check_cache_dir(config.data)
  fileutil.check_location(config.data.get("data_dir"), "config.data.data_dir")
  for key in ("manual_dir", "builtin_cache_dir"):
    fileutil.check_location(config.data.get(key), f"config.data.{key}",
                            local_only="the audio files are decoded from a local folder")
  cache = config.get("compilation_cache_dir")
  if cache != COMPILATION_CACHE_AUTO:
    fileutil.check_location(cache, "config.compilation_cache_dir")
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


build_model = program_lib.build_model  # the Separator of config.model (train.py's model)


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
  path = fileutil.as_path(init_from)
  if not path.exists():
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


def initial_state(config, model, tx, mesh, ckpts, latest: Optional[int],
                  init_from: Optional[str]):
  """(state on the mesh, resumed-from step or None). ``latest`` is the step every process agreed
  on (``distributed.check_shared_workdir``); a checkpoint that does not restore falls back to the
  previous one (``TrainCheckpoints.restore_latest_good``)."""
  rep = step_lib.replicated(mesh)
  shapes = jax.eval_shape(lambda: state_lib.create_train_state(model, tx, config.seed))
  abstract = _abstract(shapes, rep)
  if latest is not None:
    if init_from:
      logging.warning("Resuming %s at step %d; --init_from %s is ignored.", ckpts.directory,
                      latest, init_from)
    state, meta, step = ckpts.restore_latest_good(abstract, latest)
    if int(meta["data"]["start_step"]) != step or int(meta["seed"]) != config.seed:
      raise ValueError(f"checkpoint {step} was written with seed {meta['seed']} and data "
                       f"position {meta['data']['start_step']}; config.seed is {config.seed}")
    saved_on = meta.get("devices")
    if saved_on and saved_on != mesh.devices.size:
      logging.info("Checkpoint %d was written on %s devices in %s process(es); resuming on %d "
                   "devices in %d process(es) (same global batch: the same updates).", step,
                   saved_on, meta.get("processes"), mesh.devices.size, jax.process_count())
    return state, step
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
    program = program_lib.eval_program(config, mesh, num_segments=len(self.mixture), model=model)
    self.batch = program.batch_size
    self.eval_step = program.eval_step
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


# train.py's exit status after a preemption save: 128 + SIGTERM, as if the signal had killed it, so
# restart-on-failure schedulers restart the job (reaching num_train_steps exits 0).
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
  """The run saved a checkpoint at ``step`` on a preemption notice (SIGTERM) and stopped before
  ``num_train_steps``; starting it again with the same work directory resumes there."""

  def __init__(self, step: int, directory):
    super().__init__(f"preempted: saved step {step} in {directory}; restart with the same "
                     "--workdir to resume")
    self.step = step


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


def create_writer(workdir, just_logging: bool):
  """clu's default writer: TensorBoard event files in ``workdir`` plus console (process 0)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning("clu.metric_writers unavailable (%s): metrics go to the log only. "
                    "`pip install tensorboard` for TensorBoard files.", e)
    return _LoggingOnlyWriter()
  return metric_writers.create_default_writer(os.fspath(workdir), just_logging=just_logging)


COMPILATION_CACHE_AUTO = "auto"  # config.compilation_cache_dir: WORKDIR/xla_cache
COMPILATION_CACHE_SUBDIR = "xla_cache"


def use_compilation_cache(location) -> None:
  """Persistent XLA compilation cache at ``location`` (a path or URL), also when JAX already
  checked for one."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  location = str(fileutil.as_path(location))
  if jax.config.jax_compilation_cache_dir != location:
    compilation_cache.set_cache_dir(location)
    compilation_cache.reset_cache()


def compilation_cache_location(config, workdir) -> Optional[str]:
  """Where ``config.compilation_cache_dir`` puts the cache: "auto" = under the work directory,
  "" = none, else the given path or URL."""
  value = config.get("compilation_cache_dir", COMPILATION_CACHE_AUTO)
  if not value:
    return None
  if value == COMPILATION_CACHE_AUTO:
    return str(fileutil.as_path(workdir) / COMPILATION_CACHE_SUBDIR)
  return str(fileutil.as_path(value))


def prepare_workdir(workdir):
  """``workdir`` as an epath.Path, created if needed. A local work directory's parent must exist
  (a typo then fails here rather than creating a tree somewhere); URLs are taken as they are."""
  fileutil.check_location(workdir, "--workdir")
  path = fileutil.as_path(workdir)
  if not fileutil.is_url(path):
    parent = os.path.dirname(os.fspath(path))
    if not os.path.isdir(parent):
      raise FileNotFoundError(f"--workdir: the parent directory {parent} does not exist")
    if path.exists() and not path.is_dir():
      raise NotADirectoryError(f"--workdir: {path} exists and is not a directory")
  if jax.process_index() == 0:
    path.mkdir(parents=True, exist_ok=True)
  return path


def _model_description(config, model, step):
  return models.describe(model, arch=config.model.arch, sources=list(config.data.target_sources),
                         metadata={"trained_steps": step, "config_model": config.model.to_dict()})


def _checkpoint_meta(config, step, validation=None, mesh=None):
  meta = {
      "step": step,
      "seed": config.seed,
      "data": {"start_step": step, "name": config.data.name,
               "global_batch_size": config.global_batch_size},
      "validation": validation,
  }
  if mesh is not None:
    meta.update(devices=int(mesh.devices.size), processes=jax.process_count())
  return meta


def config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       init_from: Optional[str] = None,
                       accept_config_changes: bool = False) -> state_lib.TrainState:
  """Trains (or resumes) the run in ``workdir`` (a path or URL); returns the final state.

  Raises ``Preempted`` after saving a checkpoint when a preemption notice (SIGTERM) arrives,
  ``NonFiniteLossError`` when the loss or gradient norm is not finite (no checkpoint is written
  after that point: the last one is good), ``history.ConfigChangedError`` when a resume changes
  the recipe (unless ``accept_config_changes``), ``distributed.HostsDisagreeError`` when the
  processes do not see the same work directory.
  """
  check_config(config)
  fileutil.check_location(workdir, "--workdir")
  fileutil.check_location(init_from, "--init_from")
  process_index, process_count = jax.process_index(), jax.process_count()
  mesh = step_lib.make_mesh(select_devices(config))
  n_dev = mesh.devices.size
  step_lib.check_global_batch(config.global_batch_size, n_dev, process_count)
  workdir = prepare_workdir(workdir)
  if init_from:
    if not fileutil.as_path(init_from).exists():
      raise FileNotFoundError(f"--init_from: {init_from} does not exist")
    if not model_checkpoint.is_loadable(init_from):
      raise ValueError(f"--init_from: {init_from} is not a model directory (no "
                       f"{model_checkpoint.MODEL_JSON}), a training work directory (no "
                       f"{checkpointing.CHECKPOINT_DIR}/) or a checkpoint step directory")
  cache = compilation_cache_location(config, workdir)
  if cache:
    use_compilation_cache(cache)
  logging.info("Mesh: %d devices (%s) in %d process(es); per-device batch %d.", n_dev,
               jax.devices()[0].platform, process_count, config.global_batch_size // n_dev)

  program = program_lib.train_program(config, mesh)
  model, tx = program.model, program.tx
  ckpts = checkpointing.TrainCheckpoints(workdir, keep=config.keep_checkpoints,
                                         keep_best=config.keep_best_checkpoint,
                                         asynchronous=config.async_checkpoints)
  writer = None
  try:
    latest = distributed.check_shared_workdir(workdir, ckpts.latest_step())
    as_json = config_json(config)
    if latest is not None:
      history.check_resume(workdir, as_json, accept_config_changes, log=logging.warning)
    if process_index == 0:
      history.record_start(workdir, as_json, processes=process_count, devices=n_dev,
                           resumed_from=latest)
    writer = create_writer(workdir, just_logging=process_index > 0)
    state, resumed = initial_state(config, model, tx, mesh, ckpts, latest, init_from)
    step = 0 if resumed is None else resumed
    if resumed is not None:
      logging.info("Resumed from %s at step %d.", ckpts.directory, step)
    else:
      writer.write_hparams(history.flatten(as_json))
      logging.info("Model %s: %s trainable parameters.", config.model.arch,
                   f"{models.count_params(state.params):,}")

    train_step = program.train_step
    inputs.prepare(config)
    batches = inputs.train_batches(config, start_step=step, process_index=process_index,
                                   process_count=process_count)
    validator = None
    if config.eval_every_steps and config.validation.num_segments:
      validator = Validator(config, mesh, model)

    guard = checkpointing.PreemptionGuard() if process_count == 1 else contextlib.nullcontext()
    with guard:
      return _run(config, state, step, train_step, batches, mesh, model, ckpts, writer,
                  validator, guard, workdir)
  finally:
    ckpts.wait_until_finished()
    ckpts.close()
    if writer is not None:
      writer.flush()
      writer.close()


def _hooks(config, writer, workdir, start_step):
  """clu periodic actions: progress (steps/s, ETA) and, when asked, a profiler trace."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                           every_steps=config.log_every_steps, every_secs=None)]
  profile_steps = int(config.get("profile_steps", 0) or 0)
  if profile_steps and jax.process_index() == 0:
    first = start_step + max(int(config.get("profile_first_step", 0) or 0), 2)
    hooks.append(periodic_actions.Profile(logdir=os.fspath(workdir), num_profile_steps=profile_steps,
                                          profile_duration_ms=None, first_profile=first,
                                          every_steps=None, every_secs=None))
  return hooks


_done_marker = jax.jit(lambda x: x + 0)  # finishes when the update that made ``x`` has


def _read_metrics(metrics):
  """The accumulated TrainMetrics as floats (one device-to-host transfer)."""
  values = jax.jit(lambda m: m.compute())(metrics)
  return {k: float(step_lib.to_host(v)) for k, v in values.items()}


def _run(config, state, step, train_step, batches, mesh, model, ckpts, writer, validator, guard,
         workdir):
  total = config.num_train_steps
  log_every = config.log_every_steps
  ckpt_every = config.checkpoint_every_steps
  hooks = _hooks(config, writer, workdir, step)
  metrics = step_lib.empty_metrics(mesh)
  checked_since = step  # metrics accumulated over updates checked_since+1 .. step
  # Updates are dispatched asynchronously; without a bound the host would run ahead of the
  # devices by as many updates as the input pipeline can make (measured: a SIGTERM save then
  # waited 6-35 s for the queued updates on this CPU). The host waits for update n - K to finish
  # before preparing update n + 1: the devices always have work queued, a preemption save waits
  # for at most K updates, and at most K + 1 batches are on the devices.
  in_flight = collections.deque()
  max_in_flight = max(int(config.get("max_steps_in_flight", 2)), 1)

  while step < total:
    batch = step_lib.global_batch(mesh, next(batches))
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = train_step(state, batch, metrics)
    step += 1
    in_flight.append(_done_marker(state.step))  # a device-side copy: no transfer to the host
    if len(in_flight) > max_in_flight:
      in_flight.popleft().block_until_ready()
    for hook in hooks:
      hook(step)
    if isinstance(guard, checkpointing.PreemptionGuard):
      preempted = guard.requested
    else:  # several processes: JAX's preemption sync point (coordination service, no collective)
      preempted = ckpts.reached_preemption(step)
    log_now = step % log_every == 0 or step == total
    eval_now = validator is not None and (step % config.eval_every_steps == 0 or step == total)
    save_now = (ckpt_every and step % ckpt_every == 0) or step == total or preempted
    if not (log_now or eval_now or save_now):
      continue

    # A host transfer only here: the metrics since the last report, checked before anything is
    # saved, so that no checkpoint holds a state reached through a non-finite update.
    values = _read_metrics(metrics)
    if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
      raise NonFiniteLossError(
          f"non-finite loss or gradient norm (mean {values['loss']}, {values['grad_norm']}) in "
          f"updates {checked_since + 1}..{step}; stopped without saving. The last good "
          f"checkpoint is step {ckpts.latest_step()} in {ckpts.directory}; lower "
          "optimizer.learning_rate or check the data, then restart with the same --workdir to "
          "resume from it.")
    if log_now:
      scalars = {"train/loss": values["loss"], "train/grad_norm": values["grad_norm"],
                 "train/learning_rate": values["learning_rate"]}
      writer.write_scalars(step, scalars)
      logging.info("step %d/%d | loss %.5f | lr %.3g | grad norm %.3g (means over updates "
                   "%d..%d)", step, total, values["loss"], values["learning_rate"],
                   values["grad_norm"], checked_since + 1, step)
      metrics = step_lib.empty_metrics(mesh)
      checked_since = step

    validation = None
    if eval_now:
      t = time.time()
      validation, audio = validator(state)
      writer.write_scalars(step, validation)
      if audio:
        writer.write_audios(step, audio, sample_rate=inputs.SAMPLE_RATE)
      logging.info("step %d validation: %s (%.1f s)", step,
                   ", ".join(f"{k} {v:.3f} dB" for k, v in validation.items()), time.time() - t)

    if save_now or validation is not None:
      best = None if validation is None else {checkpointing.BEST_METRIC: validation["val/sdr"]}
      ckpts.save(step, state, _checkpoint_meta(config, step, validation, mesh), best,
                 model_description=_model_description(config, model, step))
    if preempted:
      ckpts.wait_until_finished()
      logging.warning("Preemption notice: saved a checkpoint at step %d in %s; stopping. Restart "
                      "with the same --workdir to resume.", step, ckpts.directory)
      raise Preempted(step, ckpts.directory)
  return state
