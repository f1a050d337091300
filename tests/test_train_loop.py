"""train_and_evaluate: exact resume, SIGTERM, kill -9 during a save, non-finite loss, checkpoints,
fine-tuning and loading a trained model, command-line errors.

The reference run is the smoke config on the built-in data (the real tf.data pipeline), 6 updates on
the 8 fake CPU devices, validation at 3 and 6, a checkpoint after every update (all kept), so any
interrupted run can be compared with it at any step.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import smoke  # noqa: E402
from resunet_jax import checkpoint as model_checkpoint  # noqa: E402
from resunet_jax.training import checkpointing  # noqa: E402
from resunet_jax.training import inputs  # noqa: E402
from resunet_jax.training import loop  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def cache_dir(training_compilation_cache):
  """The session's XLA cache directory, also handed to this module's subprocesses."""
  return training_compilation_cache


def _config(cache_dir, **overrides):
  config = smoke.get_config()
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = STEPS
  config.compilation_cache_dir = cache_dir
  config.update_from_flattened_dict(overrides)  # keys may be dotted: "data.name"
  return config


def _read_step(workdir, step):
  """{path: array} of every saved array of checkpoint ``step`` (variables + train state)."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step))
  out = {}
  for item in ("variables", "train"):
    tree = model_checkpoint.restore_item(os.path.join(directory, item))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[item + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def _assert_bit_identical(a, b):
  assert sorted(a) == sorted(b)
  different = [k for k in a if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]
  assert not different, f"{len(different)} arrays differ, e.g. {different[:3]}"


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
                if d.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """The uninterrupted run: (workdir, {array path: value} at step 6, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  state = loop.train_and_evaluate(_config(cache_dir), workdir)
  return workdir, _read_step(workdir, STEPS), state


def _subprocess_env():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)  # the child sets the same flags through resunet_jax
  return env


@pytest.mark.slow
def test_reference_run_writes_config_metrics_and_checkpoints(reference):
  workdir, final, state = reference
  assert int(state.step) == STEPS
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_train_steps"] == STEPS
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert _steps(workdir) == list(range(1, STEPS + 1))
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  with_sdr = [s for s in ckpts.all_steps() if ckpts.manager.metrics(s)]
  ckpts.close()
  assert with_sdr == [3, 6]
  meta = json.load(open(os.path.join(workdir, "checkpoints", "3", "meta", "metadata")))
  assert meta["step"] == 3 and meta["data"]["start_step"] == 3
  assert np.isfinite(meta["validation"]["val/sdr"])
  # The returned state is what was saved last.
  np.testing.assert_array_equal(np.asarray(state.params["bn0"]["scale"]),
                                final["variables['params']['bn0']['scale']"])


@pytest.mark.slow
def test_resume_equals_uninterrupted_run_bit_for_bit(reference, tmp_path, cache_dir, monkeypatch):
  """3 updates, stop, resume from the checkpoint (parameters, optimiser state, RNG, data position),
  3 more: exactly the arrays of the uninterrupted 6-update run."""
  workdir = str(tmp_path / "resumed")
  loop.train_and_evaluate(_config(cache_dir, num_train_steps=3), workdir)
  assert max(_steps(workdir)) == 3
  starts = []
  real = inputs.train_batches

  def spy(config, *, start_step, **kw):
    starts.append(start_step)
    return real(config, start_step=start_step, **kw)
  monkeypatch.setattr(inputs, "train_batches", spy)
  loop.train_and_evaluate(_config(cache_dir), workdir)
  assert starts == [3]  # the data pipeline restarts where the checkpoint left it
  _assert_bit_identical(_read_step(workdir, STEPS), reference[1])
  # (and the comparison has teeth: step 5 differs from step 6 of the same run)
  assert not np.array_equal(reference[1]["variables['params']['bn0']['scale']"],
                            _read_step(workdir, 5)["variables['params']['bn0']['scale']"])


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_the_preemption_code(reference, tmp_path, cache_dir):
  workdir = str(tmp_path / "sigterm")
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
       f"--config.num_train_steps={STEPS}", f"--config.compilation_cache_dir={cache_dir}",
       "--config.checkpoint_every_steps=1", f"--config.keep_checkpoints={STEPS}"],
      cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  sent = threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if not sent.is_set() and "step 2/" in line:
        proc.send_signal(signal.SIGTERM)
        sent.set()
  reader = threading.Thread(target=read)
  reader.start()
  rc = proc.wait(timeout=600)
  reader.join()
  log = "".join(lines)
  assert sent.is_set(), log[-3000:]
  assert rc == loop.PREEMPTED_EXIT_CODE == 143, log[-3000:]  # non-zero: schedulers restart it
  assert "Preemption notice: saved a checkpoint at step" in log, log[-3000:]
  stopped = max(_steps(workdir))
  assert 2 <= stopped < STEPS, log[-3000:]
  assert f"Preemption notice: saved a checkpoint at step {stopped}" in log
  # What it saved is exactly the uninterrupted run's state at that step (so resuming from it is
  # the resume test above).
  _assert_bit_identical(_read_step(workdir, stopped), _read_step(reference[0], stopped))


_HANG_IN_SAVE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import resunet_jax
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):  # the step-4 save hangs after writing, before its rename
      if self.get_final().name == "4":
        open({marker!r}, "w").close()
        time.sleep(3600)
      return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    from configs import smoke
    from resunet_jax.training import loop
    config = smoke.get_config()
    config.num_train_steps = {steps}
    config.checkpoint_every_steps = 1
    config.keep_checkpoints = {steps}
    config.compilation_cache_dir = {cache!r}
    loop.train_and_evaluate(config, {workdir!r})
""")


@pytest.mark.slow
def test_kill_9_during_a_save_leaves_a_resumable_run(reference, tmp_path, cache_dir):
  workdir, marker = str(tmp_path / "killed"), str(tmp_path / "in_save")
  code = _HANG_IN_SAVE.format(repo=REPO, marker=marker, steps=STEPS, cache=cache_dir,
                              workdir=workdir)
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(marker), proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
  proc.kill()  # SIGKILL in the middle of writing checkpoint 4
  proc.wait()
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  assert any(d.startswith("4.orbax-checkpoint-tmp") for d in os.listdir(ckpt_dir))
  assert max(_steps(workdir)) == 3  # the unfinished save is not a checkpoint
  loop.train_and_evaluate(_config(cache_dir), workdir)
  assert not any("tmp" in d for d in os.listdir(ckpt_dir))
  _assert_bit_identical(_read_step(workdir, STEPS), reference[1])


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir,
                                                                  monkeypatch):
  real = inputs.train_batches

  def poisoned(config, *, start_step, **kw):
    for i, batch in enumerate(real(config, start_step=start_step, **kw)):
      if start_step + i == 2:  # the third update sees a NaN
        batch = dict(batch, mixture=np.full_like(batch["mixture"], np.nan))
      yield batch
  monkeypatch.setattr(inputs, "train_batches", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite .* in updates 3\.\.3.*step 2"):
    loop.train_and_evaluate(_config(cache_dir), workdir)
  assert _steps(workdir) == [1, 2]


@pytest.mark.slow
def test_load_model_and_init_from(reference, tmp_path, cache_dir):
  """A work directory loads as a model (its best-SDR checkpoint); --init_from starts a run from a
  model directory; a model directory of another architecture is refused, naming the keys."""
  workdir = reference[0]
  model, variables, desc = model_checkpoint.load_model(workdir)
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  best = ckpts.best_step()
  ckpts.close()
  assert best in (3, 6)
  assert desc["metadata"]["step"] == best and desc["sources"] == ["vocals"]
  assert desc["arch"] == "resunet143_ismir2021" and model.channels == (4, 8)
  saved = _read_step(workdir, best)
  np.testing.assert_array_equal(np.asarray(variables["params"]["after_conv2"]["kernel"]),
                                saved["variables['params']['after_conv2']['kernel']"])
  # One step directory works too.
  _, v6, d6 = model_checkpoint.load_model(os.path.join(workdir, "checkpoints", str(STEPS)))
  assert d6["metadata"]["step"] == STEPS
  # Its output runs.
  out = model.apply(variables, np.zeros((1, 11025, 2), np.float32))
  assert out.shape == (1, 1, 11025, 2)

  # --init_from a model directory (what resunet_jax.convert writes): the run starts from it.
  model_dir = model_checkpoint.save_model(str(tmp_path / "converted"), model, v6,
                                          arch="resunet143_ismir2021", sources=["vocals"])
  state = loop.train_and_evaluate(_config(cache_dir, num_train_steps=0),
                                  str(tmp_path / "finetune"), init_from=model_dir)
  assert int(state.step) == 0
  np.testing.assert_array_equal(np.asarray(state.params["after_conv2"]["kernel"]),
                                np.asarray(v6["params"]["after_conv2"]["kernel"]))
  # ... but not into a model of another width.
  with pytest.raises(ValueError, match=r"does not fit the configured model: .*\(4,\) vs \(8,\)"):
    loop.train_and_evaluate(_config(cache_dir, num_train_steps=0, **{"model.width": 0.25}),
                            str(tmp_path / "finetune_bad"), init_from=model_dir)
  with pytest.raises(ValueError, match="not a model directory"):
    loop.train_and_evaluate(_config(cache_dir), str(tmp_path / "x"), init_from=str(tmp_path))


@pytest.mark.parametrize("args,message", [
    (["--config.optimizer.learning_rat=3e-4"],
     "unknown config key 'optimizer.learning_rat' (keys of optimizer: b1, b2, eps, learning_rate"),
    (["--config.optimizer.learning_rate=fast"], "--config.optimizer.learning_rate=fast: could not "
     "convert string to float"),
    (["--config.global_batch_size=2.5"], "--config.global_batch_size=2.5: invalid literal for int"),
    (["--config.model.arch=unet"], "config.model.arch: unknown architecture 'unet'"),
    (["--config.global_batch_size=0"], "config.global_batch_size: must be >= 1"),
    (["--workdir=/nonexistent_parent/run"], "the parent directory /nonexistent_parent does not exist"),
    (["--init_from=/nonexistent_model"], "--init_from: /nonexistent_model does not exist"),
])
def test_command_line_errors_stop_before_training(args, message, tmp_path):
  argv = [sys.executable, "train.py", "--config=configs/smoke.py"]
  if not any(a.startswith("--workdir") for a in args):
    argv.append(f"--workdir={tmp_path / 'run'}")
  proc = subprocess.run(argv + args, cwd=REPO, env=_subprocess_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_checkpoint_round_trip_with_pqmf_constants_onto_another_device_count(tmp_path):
  """A subband model's state (PQMF filters in "constants") saved from one device restores exactly
  onto a mesh of 8, and loads as a model (constants included)."""
  from resunet_jax.training import optim  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.model.arch = "mobilenet_subbandtime"
  config.model.levels = 1
  model = loop.build_model(config)
  tx = optim.make_optimizer(config)
  state = state_lib.init_train_state(model, tx, config.seed)
  assert set(state.constants) == {"pqmf_analysis", "pqmf_synthesis"}
  state = state.replace(step=state.step + 7)
  workdir = str(tmp_path / "run")
  ckpts = checkpointing.TrainCheckpoints(workdir, asynchronous=False)
  meta = loop._checkpoint_meta(config, 7)  # pylint: disable=protected-access
  desc = loop._model_description(config, model, 7)  # pylint: disable=protected-access
  assert ckpts.save(7, state, meta, model_description=desc)
  assert not ckpts.save(7, state, meta, model_description=desc)  # never overwrites a step
  mesh = step_lib.make_mesh(jax.devices()[:8])
  abstract = loop._abstract(jax.eval_shape(lambda: state), step_lib.replicated(mesh))  # pylint: disable=protected-access
  restored, meta_back = ckpts.restore(7, abstract)
  ckpts.close()
  assert meta_back["step"] == 7 and meta_back["data"]["start_step"] == 7
  assert restored.params["after_conv2"]["kernel"].sharding.mesh.devices.size == 8
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, variables, desc = model_checkpoint.load_model(workdir)
  assert desc["arch"] == "mobilenet_subbandtime" and desc["metadata"]["step"] == 7
  np.testing.assert_array_equal(np.asarray(variables["constants"]["pqmf_synthesis"]),
                                np.asarray(state.constants["pqmf_synthesis"]))


def _tiny_state(step):
  from resunet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  return state_lib.TrainState(step=np.int32(step), params={"w": np.full((3,), step, np.float32)},
                              batch_stats={"m": np.zeros((3,), np.float32)}, constants={},
                              opt_state={"count": np.int32(step)},
                              rng=np.zeros((2,), np.uint32))


def test_retention_keeps_the_last_k_and_the_best_validation_sdr(tmp_path):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path), keep=2, asynchronous=False)
  sdr = {2: 5.0, 4: 7.0, 6: 6.0}
  for step in range(1, 8):
    metrics = {checkpointing.BEST_METRIC: sdr[step]} if step in sdr else None
    ckpts.save(step, _tiny_state(step), {"step": step}, metrics)
  assert ckpts.all_steps() == [4, 6, 7]
  assert ckpts.best_step() == 4 and ckpts.latest_step() == 7
  ckpts.close()
  # Without validation results, no step is "best".
  plain = checkpointing.TrainCheckpoints(str(tmp_path / "plain"), keep=1, asynchronous=False)
  for step in (1, 2):
    plain.save(step, _tiny_state(step), {"step": step})
  assert plain.all_steps() == [2] and plain.best_step() is None
  plain.close()


def test_ablation_options_reach_the_model_and_bad_values_name_the_key():
  config = smoke.get_config()
  config.model.mask = "irm"
  config.model.activation = "relu"
  model = loop.build_model(config)
  assert (model.mask, model.activation) == ("irm", "relu")
  assert model.head_channels == len(config.data.target_sources) * 2 * 1 * max(model.subbands, 1)
  config.model.mask = "ideal"
  with pytest.raises(ValueError, match=r"config.model.mask: 'ideal' is not one of"):
    loop.check_config(config)
