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

Replicas (``config.replicas`` = R > 1): one work directory holds R independent runs trained in
one program (``training.program``), replica k with seed ``seed + k`` (its own initialisation,
data order and per-step keys). Checkpoints hold every replica (a leading axis on each array) and
resume like one run; the validation SDR is measured per replica, the best checkpoint is the best
mean over replicas. Metrics: the main TensorBoard files (``WORKDIR/events.*``) hold the means
over replicas under the usual tags, ``WORKDIR/replica_<k>/events.*`` replica k's own values
under the same tags (clu's writer collections: TensorBoard shows each replica as a run).
"""
import collections
import contextlib
import json
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
  replicas = config.get("replicas", 1)
  if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
    fail("replicas", f"must be an integer >= 1, got {replicas!r}")
  method = config.get("replica_method", "auto")
  if method not in program_lib.REPLICA_METHODS:
    fail("replica_method", f"{method!r} is not one of {program_lib.REPLICA_METHODS}")


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
  replicas = model_checkpoint.replica_count(path)
  if replicas > 1:
    raise ValueError(f"--init_from: {path} is a replicated run ({replicas} replicas); a run "
                     "starts from one model: save the replica you want as a model directory "
                     "(resunet_jax.checkpoint.load_model(path, replica=k), then save_model) and "
                     "start from that")
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


def initial_state(config, program, ckpts, latest: Optional[int], init_from: Optional[str]):
  """(state on the mesh, resumed-from step or None). ``latest`` is the step every process agreed
  on (``distributed.check_shared_workdir``); a checkpoint that does not restore falls back to the
  previous one (``TrainCheckpoints.restore_latest_good``). ``program``: the run's
  ``program.TrainProgram`` (the state's shapes and shardings, replicas included)."""
  model, mesh = program.model, program.mesh
  abstract = program.abstract_state()  # shapes and shardings on this run's mesh
  if latest is not None:
    if init_from:
      logging.warning("Resuming %s at step %d; --init_from %s is ignored.", ckpts.directory,
                      latest, init_from)
    saved_replicas = ckpts.saved_replicas(latest)
    if saved_replicas is not None and saved_replicas != program.replicas:
      raise ValueError(
          f"checkpoint {latest} in {ckpts.directory} holds {saved_replicas} replica(s); "
          f"config.replicas is {program.replicas}. A run's number of replicas cannot change: "
          "restore config.replicas or start a new work directory.")
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
  return program.init_state(variables), None


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
    self.replicas = program.replicas
    self.audio_written = False

  def __call__(self, state):
    """({metric: value}, {audio key: (N, L, 2)}); with R > 1 replicas, lists of R of each
    (replica k's metrics and estimates; the mixture and references are in replica 0's audio)."""
    n_audio = min(self.config.validation.audio_examples, len(self.mixture))
    variables = state.variables()
    sdrs, estimates = [], []
    for start, mix, tgt, pad in self._padded_batches():
      est, sdr = self.eval_step(variables, step_lib.global_array_from_host(self.mesh, mix),
                                step_lib.global_array_from_host(self.mesh, tgt))
      sdr = step_lib.to_host(sdr)
      sdr = sdr[None] if self.replicas == 1 else sdr  # one run: a replica axis of 1
      sdrs.append(sdr[:, :self.batch - pad])  # (R, b, S)
      if start < n_audio:
        est = step_lib.to_host(est)
        est = est[None] if self.replicas == 1 else est
        estimates.append(est[:, :n_audio - start])
    sdr = np.concatenate(sdrs, axis=1)  # (R, N, S)
    metrics = [self._metrics(per_replica) for per_replica in sdr]
    audio = [{} for _ in metrics]
    if n_audio:
      est = np.concatenate(estimates, axis=1)  # (R, n_audio, S, L, 2)
      for k, replica_audio in enumerate(audio):
        for i, s in enumerate(self.sources):
          replica_audio[f"val/estimate_{s}"] = np.clip(est[k, :, i], -1, 1)
      if not self.audio_written:
        audio[0]["val/mixture"] = np.clip(self.mixture[:n_audio], -1, 1)
        for i, s in enumerate(self.sources):
          audio[0][f"val/reference_{s}"] = np.clip(self.targets[:n_audio, i], -1, 1)
        self.audio_written = True
    if self.replicas == 1:
      return metrics[0], audio[0]
    return metrics, audio

  def _padded_batches(self):
    """(start, mixture, targets, pad) per compiled batch of the validation segments; the last is
    padded with ``pad`` silent examples (their results are dropped)."""
    for start in range(0, len(self.mixture), self.batch):
      mix = self.mixture[start:start + self.batch]
      tgt = self.targets[start:start + self.batch]
      pad = self.batch - len(mix)
      if pad:
        mix = np.concatenate([mix, np.zeros((pad,) + mix.shape[1:], mix.dtype)])
        tgt = np.concatenate([tgt, np.zeros((pad,) + tgt.shape[1:], tgt.dtype)])
      yield start, mix, tgt, pad

  def _metrics(self, sdr):
    """{"val/sdr_<source>": median over segments, "val/sdr": their mean} of (N, S) SDRs."""
    per_source = (np.nanmedian(sdr, axis=0) if np.isfinite(sdr).any()
                  else np.full(len(self.sources), np.nan))
    metrics = {f"val/sdr_{s}": float(v) for s, v in zip(self.sources, per_source)}
    metrics["val/sdr"] = float(np.mean(per_source))
    return metrics


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

  def __init__(self, collection=None):
    self.prefix = f" collection={collection}" if collection else ""

  def write_scalars(self, step, scalars):
    logging.info("[%d]%s %s", step, self.prefix,
                 ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

  def write_audios(self, step, audios, *, sample_rate):
    del sample_rate
    logging.info("[%d] audio %s (not written: no tensorboard)", step, sorted(audios))

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir, just_logging: bool, collection: Optional[str] = None):
  """clu's default writer: TensorBoard event files in ``workdir`` (``workdir/<collection>`` for
  a collection, e.g. a replica) plus console (process 0)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if collection is None:
      logging.warning("clu.metric_writers unavailable (%s): metrics go to the log only. "
                      "`pip install tensorboard` for TensorBoard files.", e)
    return _LoggingOnlyWriter(collection)
  return metric_writers.create_default_writer(os.fspath(workdir), just_logging=just_logging,
                                              collection=collection)


def replica_name(k: int) -> str:
  """The folder (TensorBoard run, clu collection) of replica k's metrics in a work directory."""
  return f"replica_{k}"


def mean_over_replicas(per_replica):
  """{key: mean over replicas} of a list of {key: float} (NaN if any replica's is NaN)."""
  return {key: float(np.mean([m[key] for m in per_replica])) for key in per_replica[0]}


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
  metadata = {"trained_steps": step, "config_model": config.model.to_dict()}
  replicas = program_lib.num_replicas(config)
  if replicas > 1:  # the variables hold every replica (resunet_jax.checkpoint.load_model)
    metadata.update(replicas=replicas, seeds=program_lib.replica_seeds(config))
  return models.describe(model, arch=config.model.arch, sources=list(config.data.target_sources),
                         metadata=metadata)


def _checkpoint_meta(config, step, validation=None, mesh=None, replica_validation=None):
  """The ``meta`` item of a checkpoint. With replicas: ``replicas``, ``seeds``, ``validation``
  the means over replicas and ``replica_validation`` each replica's."""
  meta = {
      "step": step,
      "seed": config.seed,
      "data": {"start_step": step, "name": config.data.name,
               "global_batch_size": config.global_batch_size},
      "validation": validation,
  }
  replicas = program_lib.num_replicas(config)
  if replicas > 1:
    meta.update(replicas=replicas, seeds=program_lib.replica_seeds(config),
                replica_validation=replica_validation)
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
  mesh = program_lib.make_mesh_for(config, select_devices(config))
  n_dev = mesh.devices.size
  replicas = program_lib.num_replicas(config)
  if replicas == 1:
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
  program = program_lib.train_program(config, mesh)
  model = program.model
  if replicas == 1:
    logging.info("Mesh: %d devices (%s) in %d process(es); per-device batch %d.", n_dev,
                 jax.devices()[0].platform, process_count, config.global_batch_size // n_dev)
  else:
    groups, data = (int(mesh.shape[a]) for a in (step_lib.REPLICA_AXIS, step_lib.AXIS))
    logging.info("Mesh: %d devices (%s) in %d process(es) as replica x data = %d x %d: %d "
                 "replicas (seeds %d..%d), %d per device (%s), per-device batch %d per replica.",
                 n_dev, jax.devices()[0].platform, process_count, groups, data, replicas,
                 config.seed, config.seed + replicas - 1, replicas // groups,
                 program.replica_method, config.global_batch_size // data)
  ckpts = checkpointing.TrainCheckpoints(workdir, keep=config.keep_checkpoints,
                                         keep_best=config.keep_best_checkpoint,
                                         asynchronous=config.async_checkpoints)
  writer = None
  replica_writers = []
  try:
    latest = distributed.check_shared_workdir(workdir, ckpts.latest_step())
    as_json = config_json(config)
    if latest is not None:
      history.check_resume(workdir, as_json, accept_config_changes, log=logging.warning)
    if process_index == 0:
      history.record_start(workdir, as_json, processes=process_count, devices=n_dev,
                           resumed_from=latest)
    writer = create_writer(workdir, just_logging=process_index > 0)
    if replicas > 1:
      replica_writers = [create_writer(workdir, just_logging=process_index > 0,
                                       collection=replica_name(k)) for k in range(replicas)]
    state, resumed = initial_state(config, program, ckpts, latest, init_from)
    step = 0 if resumed is None else resumed
    if resumed is not None:
      logging.info("Resumed from %s at step %d.", ckpts.directory, step)
    else:
      hparams = history.flatten(as_json)
      writer.write_hparams(hparams)
      for k, replica_writer in enumerate(replica_writers):
        replica_writer.write_hparams(dict(hparams, seed=config.seed + k, replica=k))
      logging.info("Model %s: %s trainable parameters%s.", config.model.arch,
                   f"{models.count_params(state.params) // replicas:,}",
                   f" per replica, {replicas} replicas" if replicas > 1 else "")

    inputs.prepare(config)
    batches = _train_batches(config, program, step)
    validator = None
    if config.eval_every_steps and config.validation.num_segments:
      validator = Validator(config, mesh, model)

    guard = checkpointing.PreemptionGuard() if process_count == 1 else contextlib.nullcontext()
    with guard:
      return _run(config, state, step, program, batches, ckpts, writer, replica_writers,
                  validator, guard, workdir)
  finally:
    ckpts.wait_until_finished()
    ckpts.close()
    for w in ([writer] if writer is not None else []) + replica_writers:
      w.flush()
      w.close()


def _train_batches(config, program, start_step):
  """Global batches on the mesh from ``start_step``: this process's examples of the input
  pipeline (``inputs.train_batches``), with replicas this process's replicas and examples
  (``inputs.ReplicaBatches``, one pipeline per replica with its own seed)."""
  mesh = program.mesh
  if program.replicas == 1:
    host = inputs.train_batches(config, start_step=start_step, process_index=jax.process_index(),
                                process_count=jax.process_count())
    return (step_lib.global_batch(mesh, batch) for batch in host)
  shape = program.batch_shape()
  replicas, rows = step_lib.process_indices(program.batch_sharding(), shape)
  chunk = program.global_batch_size // program_lib.data_axis_size(mesh)
  host = inputs.ReplicaBatches(config, start_step=start_step, replicas=replicas, rows=rows,
                               chunk=chunk)
  return (step_lib.replica_global_batch(mesh, shape, batch) for batch in host)


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
  """The accumulated TrainMetrics as floats (one device-to-host transfer); with replicas, numpy
  arrays of one value per replica."""
  compute = lambda m: m.compute()  # pylint: disable=unnecessary-lambda-assignment
  if np.ndim(metrics.loss.total):  # one set per replica (leading axis)
    compute = jax.vmap(compute)
  values = jax.jit(compute)(metrics)
  out = {k: step_lib.to_host(v) for k, v in values.items()}
  return {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64) for k, v in out.items()}


def _run(config, state, step, program, batches, ckpts, writer, replica_writers, validator, guard,
         workdir):
  mesh, model, train_step = program.mesh, program.model, program.train_step
  replicas = program.replicas
  total = config.num_train_steps
  log_every = config.log_every_steps
  ckpt_every = config.checkpoint_every_steps
  hooks = _hooks(config, writer, workdir, step)
  metrics = program.empty_metrics()
  checked_since = step  # metrics accumulated over updates checked_since+1 .. step
  # Updates are dispatched asynchronously; without a bound the host would run ahead of the
  # devices by as many updates as the input pipeline can make (measured: a SIGTERM save then
  # waited 6-35 s for the queued updates on this CPU). The host waits for update n - K to finish
  # before preparing update n + 1: the devices always have work queued, a preemption save waits
  # for at most K updates, and at most K + 1 batches are on the devices.
  in_flight = collections.deque()
  max_in_flight = max(int(config.get("max_steps_in_flight", 2)), 1)

  while step < total:
    batch = next(batches)
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
    finite = np.isfinite(values["loss"]) & np.isfinite(values["grad_norm"])
    if not np.all(finite):
      which = ""
      if replicas > 1:
        bad = [k for k in range(replicas) if not finite[k]]
        which = f" of replica(s) {bad} (seeds {[config.seed + k for k in bad]})"
      raise NonFiniteLossError(
          f"non-finite loss or gradient norm{which} (mean {values['loss']}, "
          f"{values['grad_norm']}) in updates {checked_since + 1}..{step}; stopped without "
          f"saving. The last good checkpoint is step {ckpts.latest_step()} in "
          f"{ckpts.directory}; lower optimizer.learning_rate or check the data, then restart "
          "with the same --workdir to resume from it.")
    if log_now:
      names = {"train/loss": "loss", "train/grad_norm": "grad_norm",
               "train/learning_rate": "learning_rate"}
      if replicas == 1:
        writer.write_scalars(step, {tag: values[key] for tag, key in names.items()})
        logging.info("step %d/%d | loss %.5f | lr %.3g | grad norm %.3g (means over updates "
                     "%d..%d)", step, total, values["loss"], values["learning_rate"],
                     values["grad_norm"], checked_since + 1, step)
      else:
        for k, replica_writer in enumerate(replica_writers):
          replica_writer.write_scalars(step, {tag: float(values[key][k])
                                              for tag, key in names.items()})
        writer.write_scalars(step, {tag: float(np.mean(values[key]))
                                    for tag, key in names.items()})
        logging.info("step %d/%d | loss %.5f (replicas: %s) | lr %.3g | grad norm %.3g (means "
                     "over updates %d..%d and over %d replicas)", step, total,
                     np.mean(values["loss"]), " ".join(f"{v:.5f}" for v in values["loss"]),
                     np.mean(values["learning_rate"]), np.mean(values["grad_norm"]),
                     checked_since + 1, step, replicas)
      metrics = program.empty_metrics()
      checked_since = step

    validation = replica_validation = None
    if eval_now:
      t = time.time()
      validation, audio = validator(state)
      if replicas > 1:
        replica_validation = validation
        validation = mean_over_replicas(replica_validation)
        for replica_writer, scores, sounds in zip(replica_writers, replica_validation, audio):
          replica_writer.write_scalars(step, scores)
          if sounds:
            replica_writer.write_audios(step, sounds, sample_rate=inputs.SAMPLE_RATE)
        audio = None
      writer.write_scalars(step, validation)
      if audio:
        writer.write_audios(step, audio, sample_rate=inputs.SAMPLE_RATE)
      logging.info("step %d validation%s: %s (%.1f s)", step,
                   f" (means over {replicas} replicas)" if replicas > 1 else "",
                   ", ".join(f"{k} {v:.3f} dB" for k, v in validation.items()), time.time() - t)
      if replicas > 1:
        logging.info("step %d validation per replica: %s", step, "; ".join(
            f"{replica_name(k)} val/sdr {v['val/sdr']:.3f} dB"
            for k, v in enumerate(replica_validation)))

    if save_now or validation is not None:
      best = None if validation is None else {checkpointing.BEST_METRIC: validation["val/sdr"]}
      ckpts.save(step, state, _checkpoint_meta(config, step, validation, mesh,
                                               replica_validation), best,
                 model_description=_model_description(config, model, step))
    if preempted:
      ckpts.wait_until_finished()
      logging.warning("Preemption notice: saved a checkpoint at step %d in %s; stopping. Restart "
                      "with the same --workdir to resume.", step, ckpts.directory)
      raise Preempted(step, ckpts.directory)
  return state
