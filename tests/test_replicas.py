"""Replicas (``config.replicas``): R independent runs, seeds seed .. seed + R - 1, in one program.

Replica k ends at the parameters of seed + k trained alone, on a 2-D (replica x data) mesh and with
several replicas per device; a replicated run resumes bit-exactly, elastically on another device
count, and refuses a changed replica count; each replica loads, evaluates and separates on its own,
and its metrics are written where TensorBoard and ``compare.read_scalars`` find them.

The model is the smoke config's with one level (the smallest ResUNet), on ``data.name=random``.
Plain SGD where runs on different layouts are compared: Adam turns the rounding noise of a zero
gradient (a conv bias right before a BatchNorm) into a full lr-sized step, so its trajectories on
two reduction orders part in those parameters whatever the precision (measured, replica vs seed alone
after 3 updates, max |diff| / max |value|: AMSGrad up to 4e-4 in float32 and 5e-5 in float64 --
float64 does not help -- against 3e-8 to 1.2e-7 with SGD in float32).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import smoke  # noqa: E402
from resunet_jax import checkpoint as model_checkpoint  # noqa: E402
from resunet_jax.training import checkpointing  # noqa: E402
from resunet_jax.training import history  # noqa: E402
from resunet_jax.training import inputs  # noqa: E402
from resunet_jax.training import loop  # noqa: E402
from resunet_jax.training import program as program_lib  # noqa: E402
from resunet_jax.training import step as step_lib  # noqa: E402

pytestmark = pytest.mark.usefixtures("training_compilation_cache")

STEPS = 4
R = 2


def _config(cache=None, **overrides):
  config = smoke.get_config()
  config.data.name = "random"
  config.model.levels = 1
  config.replicas = R
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.num_train_steps = STEPS
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = STEPS
  config.num_devices = 2
  if cache:
    config.compilation_cache_dir = cache
  config.update_from_flattened_dict(overrides)
  return config


def _relative_difference(a, b):
  """max |a - b| / max |a| over all leaves (one scale per tree: see test_train_step)."""
  a = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(a)]
  b = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(b)]
  assert [x.shape for x in a] == [y.shape for y in b]
  return max(np.max(np.abs(x - y)) for x, y in zip(a, b)) / max(np.max(np.abs(x)) for x in a)


def _replica(tree, k):
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[k], tree)


def _read_step(workdir, step):
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step))
  out = {}
  for item in ("variables", "train"):
    tree = model_checkpoint.restore_item(os.path.join(directory, item))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[item + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def _train(config, devices, steps):
  """(initial state, final state, per-update losses), on the host, of ``steps`` updates of the
  program train.py builds for ``config`` on ``devices``."""
  program = program_lib.train_program(config, program_lib.make_mesh_for(config, devices))
  state = program.init_state()
  init = jax.device_get(state)
  batches = loop._train_batches(config, program, 0)  # pylint: disable=protected-access
  losses = []
  for _ in range(steps):
    state, metrics = program.train_step(state, next(batches), program.empty_metrics())
    losses.append(loop._read_metrics(metrics)["loss"])  # pylint: disable=protected-access
  return init, jax.device_get(state), np.asarray(losses)


# ------------------------------------------------------------------------------------------------
# Layout and program.


@pytest.mark.parametrize("replicas,devices,batch,layout", [
    (4, 8, 8, (4, 2)), (2, 8, 8, (2, 4)), (3, 8, 8, (1, 8)), (8, 8, 1, (8, 1)), (4, 1, 4, (1, 1)),
    (6, 8, 4, (2, 4))])
def test_layout_puts_replicas_on_devices_first_and_splits_the_batch_with_the_rest(
    replicas, devices, batch, layout):
  assert program_lib.replica_layout(replicas, devices, batch) == layout


def test_a_layout_that_cannot_exist_names_the_rule():
  with pytest.raises(ValueError) as e:
    program_lib.replica_layout(2, 8, 1)
  text = str(e.value)
  assert "config.replicas=2 with config.global_batch_size=1 (per replica)" in text
  assert "replica must divide config.replicas and data must divide config.global_batch_size" in text
  config = _config(global_batch_size=3)
  with pytest.raises(ValueError, match="cannot be laid out on 8 devices"):
    program_lib.make_mesh_for(config, jax.devices()[:8])
  config.replicas = 0
  with pytest.raises(ValueError, match="config.replicas: must be an integer >= 1, got 0"):
    loop.check_config(config)
  config.replicas, config.replica_method = 2, "pmap"
  with pytest.raises(ValueError, match="config.replica_method: 'pmap' is not one of"):
    loop.check_config(config)


def test_one_replica_is_todays_program_and_replicas_lower_with_abstract_arguments():
  """R = 1: the 1-D mesh and exactly the step make_train_step builds (same lowered program).
  R = 4 on 8 devices: a 4 x 2 mesh, every state leaf but the step with a leading axis of 4 split
  over "replica", the batch (4, B, ...) -- lowered from abstract arguments only."""
  one = _config(replicas=1)
  mesh = program_lib.make_mesh_for(one, jax.devices()[:8])
  assert mesh.axis_names == (step_lib.AXIS,) and mesh.devices.size == 8
  program = program_lib.train_program(one, mesh)
  direct = step_lib.make_train_step(mesh, program.model, program.tx, program.learning_rate_fn)
  assert program.lower().as_text() == direct.lower(*program.abstract_args()).as_text()
  four = _config(replicas=4, replica_method="vmap")
  mesh4 = program_lib.make_mesh_for(four, jax.devices()[:8])
  assert dict(mesh4.shape) == {"replica": 4, "data": 2}
  program4 = program_lib.train_program(four, mesh4)
  state, batch, metrics = program4.abstract_args()
  assert state.step.shape == () and metrics.loss.total.shape == (4,)
  for leaf, one_leaf in zip(jax.tree_util.tree_leaves(state.params),
                            jax.tree_util.tree_leaves(program.abstract_state().params)):
    assert leaf.shape == (4,) + one_leaf.shape
    assert leaf.sharding.spec == jax.P("replica")
  assert batch["mixture"].shape[:2] == (4, 8)
  assert batch["mixture"].sharding.spec == jax.P("replica", "data")
  text = program4.lower().as_text()
  assert "all-reduce" in text or "all_reduce" in text  # the gradient mean over "data"
  evaluation = program_lib.eval_program(four, mesh4, num_segments=3)
  assert evaluation.batch_size == 4  # 3 segments rounded up to the 2 devices of "data"
  assert evaluation.lower() is not None


# ------------------------------------------------------------------------------------------------
# Replica k = seed + k alone.


@pytest.mark.slow
def test_replica_k_ends_where_seed_plus_k_alone_does_on_both_layouts():
  """3 updates of R = 2 replicas against seeds 0 and 1 trained alone (one device): replicas
  vmapped on one device, and one replica per device on a 2 x 4 mesh (gradient and BatchNorm
  means over 4 devices). Same initialisation bit for bit; after 3 updates, measured max |diff| /
  max |value| (float32): parameters 3.0e-8 (replica 0), 1.2e-7 (replica 1), BatchNorm statistics
  8.3e-8 and 7.7e-8, the same on both layouts (tolerance 2e-6)."""
  steps = 3
  alone = [_train(_config(replicas=1, seed=k), jax.devices()[:1], steps) for k in range(R)]
  for devices, method in ((jax.devices()[:1], "vmap"), (jax.devices()[:8], "auto")):
    config = _config(replica_method=method)
    init, state, losses = _train(config, devices, steps)
    assert int(state.step) == steps
    for k in range(R):
      alone_init, alone_state, alone_losses = alone[k]
      # Replica k's initialisation is seed k's, bit for bit.
      for a, b in zip(jax.tree_util.tree_leaves(_replica(init.params, k)),
                      jax.tree_util.tree_leaves(alone_init.params)):
        np.testing.assert_array_equal(a, b)
      np.testing.assert_allclose(losses[:, k], alone_losses, rtol=1e-5)
      for what in ("params", "batch_stats"):
        difference = _relative_difference(getattr(alone_state, what),
                                          _replica(getattr(state, what), k))
        print(f"{len(devices)} device(s), {method}, replica {k} {what}: {difference:.2e}")
        assert difference <= 2e-6
    # The comparison has teeth: the two replicas are different runs.
    assert _relative_difference(_replica(state.params, 0), _replica(state.params, 1)) > 1e-2


def test_replica_batches_are_each_seeds_batches_and_a_process_share_is_its_slice():
  config = _config()
  full = inputs.ReplicaBatches(config, start_step=3, replicas=[0, 1], rows=range(8), chunk=2)
  batch = next(full)
  assert batch["mixture"].shape[:2] == (2, 8)
  for k in range(R):
    alone = next(inputs.train_batches(_config(seed=k), start_step=3))
    np.testing.assert_array_equal(batch["mixture"][k], alone["mixture"])
  # What a process holding replica 1 and examples 2..5 (two devices of 2) makes.
  part = next(inputs.ReplicaBatches(config, start_step=3, replicas=[1], rows=[2, 3, 4, 5],
                                    chunk=2))
  np.testing.assert_array_equal(part["targets"], batch["targets"][1:, 2:6])
  row_blocks = inputs._row_blocks  # pylint: disable=protected-access
  assert row_blocks([2, 3, 4, 5], 8, 2) == [(1, 4), (2, 4)]  # not aligned: two device shares
  assert row_blocks([4, 5, 6, 7], 8, 2) == [(1, 2)]  # the second half
  assert row_blocks(range(8), 8, 1) == [(0, 1)]


# ------------------------------------------------------------------------------------------------
# A replicated run: checkpoints, resume, loading, evaluation, separation, metrics.


@pytest.fixture(scope="module")
def cache_dir(training_compilation_cache):
  return training_compilation_cache


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
  """The uninterrupted R = 2 run on 2 devices (a 2 x 1 mesh): its work directory."""
  workdir = str(tmp_path_factory.mktemp("replicated"))
  state = loop.train_and_evaluate(_config(cache_dir), workdir)
  assert int(state.step) == STEPS
  assert np.shape(state.params["bn0"]["scale"])[0] == R
  return workdir


@pytest.mark.slow
def test_checkpoints_hold_every_replica_and_resume_bit_exactly_and_elastically(
    run, tmp_path, cache_dir, monkeypatch):
  meta = json.load(open(os.path.join(run, "checkpoints", "2", "meta", "metadata")))
  assert meta["replicas"] == R and meta["seeds"] == [0, 1]
  assert len(meta["replica_validation"]) == R
  np.testing.assert_allclose(meta["validation"]["val/sdr"],
                             np.mean([v["val/sdr"] for v in meta["replica_validation"]]))
  reference = _read_step(run, STEPS)
  assert reference["variables['params']['bn0']['scale']"].shape[0] == R

  # A preemption notice (SIGTERM) while update 3 is prepared: the run saves step 3 and stops; what
  # it saved is the uninterrupted run's step 3, and resumed to 4 it ends bit for bit there.
  real, sent = inputs.train_batches, []

  def notice(config, *, start_step, **kw):
    for i, batch in enumerate(real(config, start_step=start_step, **kw)):
      if start_step + i == 2 and not sent:
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
      yield batch
  workdir = str(tmp_path / "resumed")
  with monkeypatch.context() as patch:
    patch.setattr(inputs, "train_batches", notice)
    with pytest.raises(loop.Preempted) as stopped:
      loop.train_and_evaluate(_config(cache_dir), workdir)
  assert stopped.value.step == 3 and len(sent) == 1
  preempted = _read_step(workdir, 3)
  assert not [k for k in preempted if not np.array_equal(preempted[k], _read_step(run, 3)[k])]
  elastic = str(tmp_path / "elastic")
  shutil.copytree(workdir, elastic)
  loop.train_and_evaluate(_config(cache_dir), workdir)
  resumed = _read_step(workdir, STEPS)
  assert sorted(resumed) == sorted(reference)
  different = [k for k in reference if not np.array_equal(reference[k], resumed[k])]
  assert not different, different[:3]
  assert not np.array_equal(reference["variables['params']['bn0']['scale']"], preempted[
      "variables['params']['bn0']['scale']"])

  # Elastic: resumed on 8 devices (a 2 x 4 mesh: each replica's batch split over 4 devices), the
  # same updates up to rounding.
  loop.train_and_evaluate(_config(cache_dir, num_devices=8), elastic)
  record = history.starts(elastic)[-1]
  assert (record["resumed_from_step"], record["devices"]) == (3, 8)
  variables = {k: v for k, v in reference.items() if k.startswith("variables")}
  difference = _relative_difference(
      variables, {k: v for k, v in _read_step(elastic, STEPS).items() if k in variables})
  print(f"resumed on 8 devices vs uninterrupted on 2: {difference:.2e}")
  assert difference <= 2e-6

  # The number of replicas is part of the recipe, and cannot change even when accepted.
  with pytest.raises(history.ConfigChangedError, match="replicas: 2 -> 3"):
    loop.train_and_evaluate(_config(cache_dir, replicas=3, num_train_steps=5), elastic)
  with pytest.raises(ValueError, match="holds 2 replica\\(s\\); config.replicas is 4"):
    loop.train_and_evaluate(_config(cache_dir, replicas=4, num_train_steps=5), elastic,
                            accept_config_changes=True)


def test_a_run_from_before_replicas_existed_resumes_without_a_recipe_change():
  old = {"seed": 0, "global_batch_size": 8}
  assert history.recipe_changes(old, dict(old, replicas=1)) == []
  assert history.recipe_changes(old, dict(old, replicas=2)) == [("replicas", 1, 2)]


def test_how_the_model_is_computed_is_not_part_of_the_recipe():
  # A run from before layout/remat existed, or resumed on another platform, keeps its recipe.
  old = {"seed": 0, "model": {"mask": "irm", "width": 1.0}}
  new = {"seed": 0, "model": {"mask": "irm", "width": 1.0, "remat": "stage", "layout": "folded",
                              "conv_backend": "xla"}}
  assert history.recipe_changes(old, new) == []
  assert history.recipe_changes(new, dict(new, model=dict(new["model"], width=0.5))) == [
      ("model.width", 1.0, 0.5)]


@pytest.mark.slow  # the replicated run (fixture)
def test_load_model_picks_a_replica_and_names_the_valid_range(run, tmp_path):
  with pytest.raises(ValueError, match=r"holds 2 replicas .* choose one with replica=k "
                                       r"\(--replica=k\), 0 <= k <= 1"):
    model_checkpoint.load_model(run)
  for bad in (2, -1):
    with pytest.raises(ValueError, match=f"replica={bad} is out of range: .* valid: 0..1"):
      model_checkpoint.load_model(run, replica=bad)
  assert model_checkpoint.replica_count(run) == R
  outputs = []
  for k in range(R):
    model, variables, desc = model_checkpoint.load_model(run, replica=k)
    metadata = desc["metadata"]
    assert (metadata["replica"], metadata["seed"], metadata["replicas"]) == (k, k, R)
    step = metadata["step"]
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["after_conv2"]["kernel"]),
        _read_step(run, step)["variables['params']['after_conv2']['kernel']"][k])
    outputs.append(np.asarray(model.apply(variables, np.ones((1, 11025, 2), np.float32) * 0.1)))
  assert not np.allclose(outputs[0], outputs[1])
  # A model directory saved from replica 1 records where it came from; it holds one model.
  model, variables, desc = model_checkpoint.load_model(run, replica=1)
  out = model_checkpoint.save_model(str(tmp_path / "replica1"), model, variables,
                                    arch=desc["arch"], sources=desc["sources"],
                                    metadata=desc["metadata"])
  recorded = model_checkpoint.read_description(out)["metadata"]
  assert (recorded["seed"], recorded["replica"]) == (1, 1)
  with pytest.raises(ValueError, match="is a model directory \\(one model\\)"):
    model_checkpoint.load_model(out, replica=0)
  with pytest.raises(ValueError, match="is a replicated run \\(2 replicas\\)"):
    loop.train_and_evaluate(_config(replicas=1, num_train_steps=0), str(tmp_path / "ft"),
                            init_from=run)


@pytest.mark.slow  # the replicated run (fixture)
def test_metrics_per_replica_and_their_mean_for_tensorboard_and_compare(run):
  from resunet_jax import compare  # pylint: disable=g-import-not-at-top
  mean = compare.read_scalars(run)
  per_replica = [compare.read_scalars(os.path.join(run, loop.replica_name(k))) for k in range(R)]
  for tag in ("train/loss", "val/sdr", "val/sdr_vocals"):
    steps, values = mean[tag]
    for scalars in per_replica:
      assert list(scalars[tag][0]) == list(steps)
    np.testing.assert_allclose(values, np.mean([s[tag][1] for s in per_replica], axis=0),
                               rtol=1e-5)
  assert list(mean["val/sdr"][0]) == [2, 4]
  assert not np.allclose(per_replica[0]["train/loss"][1], per_replica[1]["train/loss"][1])


def _song(seconds=2.0, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * 44100)) / 44100
  vocals = 0.1 * np.sin(2 * np.pi * 440 * t)[:, None] * np.ones((1, 2))
  accompaniment = 0.05 * rng.standard_normal((len(t), 2))
  return vocals.astype(np.float32), accompaniment.astype(np.float32)


@pytest.mark.slow  # the replicated run (fixture)
def test_eval_scores_each_replica_into_its_own_folder(run, tmp_path, monkeypatch, capsys):
  from resunet_jax.cli import evaluate as evaluate_cli  # pylint: disable=g-import-not-at-top
  from resunet_jax.evaluation import loop as eval_loop  # pylint: disable=g-import-not-at-top
  from resunet_jax.evaluation import track_sources  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  vocals, accompaniment = _song()
  track = {"name": "tone", "mixture": vocals + accompaniment, "sample_rate": 44100,
           "stems": {"vocals": vocals, "accompaniment": accompaniment}}
  monkeypatch.setattr(eval_loop.track_sources, "MusdbTracks",
                      lambda *a, **k: track_sources.InMemoryTracks([track]))
  flags = ["--workers=0", "--chunk_seconds=1", "--scheme=crossfade", "--overlap_seconds=0.25"]

  def main(*args):
    evaluate_cli.FLAGS.unparse_flags()
    evaluate_cli.main(evaluate_cli.FLAGS(["eval.py", *args, *flags]))

  with pytest.raises(app.UsageError, match=r"holds 2 replicas \(config.replicas\): pass "
                                           r"--replica=k \(0 <= k <= 1\) or --replica=all"):
    main(f"--workdir={run}")
  with pytest.raises(app.UsageError, match="--replica=2 is out of range: .* valid: 0..1"):
    main(f"--workdir={run}", "--replica=2")
  main(f"--workdir={run}", "--replica=all")
  step = model_checkpoint.load_model(run, replica=0)[2]["metadata"]["step"]
  scores = []
  for k in range(R):
    folder = os.path.join(run, "eval", f"step_{step}", f"replica_{k}", "test")
    settings = json.load(open(os.path.join(folder, "settings.json")))
    assert json.dumps(settings).count(f'"replica": {k}') == 1
    scores.append(json.load(open(os.path.join(folder, "summary.json"))))
  assert scores[0] != scores[1]
  assert not os.path.exists(os.path.join(run, "eval", f"step_{step}", "test"))
  main(f"--workdir={run}", "--replica=1", f"--eval_dir={tmp_path / 'mine'}")
  assert sorted(os.listdir(tmp_path / "mine")) == ["replica_1"]
  assert json.load(open(tmp_path / "mine" / "replica_1" / "summary.json")) == scores[1]
  # A model directory saved from replica 1 is one model: no replica folder, the same scores
  # (its metadata names the step, which a model directory's evaluation folder takes over).
  model, variables, desc = model_checkpoint.load_model(run, replica=1)
  saved = model_checkpoint.save_model(str(tmp_path / "replica1"), model, variables,
                                      arch=desc["arch"], sources=desc["sources"],
                                      metadata=desc["metadata"])
  main(f"--checkpoint={saved}")
  assert json.load(open(os.path.join(saved, "eval", f"step_{step}", "test",
                                     "summary.json"))) == scores[1]
  capsys.readouterr()


@pytest.mark.slow  # the replicated run (fixture)
def test_separate_needs_a_replica_of_a_replicated_run(run, tmp_path, capsys):
  from resunet_jax.cli import separate as separate_cli  # pylint: disable=g-import-not-at-top
  vocals, accompaniment = _song(1.5)
  song = str(tmp_path / "song.wav")
  sf.write(song, vocals + accompaniment, 44100)
  chunk = ["--chunk_seconds", "1", "--overlap_seconds", "0.25", "--quiet"]
  assert separate_cli.main([song, "--checkpoint", run, "--out", str(tmp_path / "o")] + chunk) == 2
  assert "choose one with replica=k (--replica=k), 0 <= k <= 1" in capsys.readouterr().err
  assert separate_cli.main([song, "--checkpoint", run, "--replica", "2", "--out",
                            str(tmp_path / "o")] + chunk) == 2
  assert "replica=2 is out of range" in capsys.readouterr().err
  written = []
  for k in range(R):
    out = tmp_path / f"out{k}"
    assert separate_cli.main([song, "--checkpoint", run, "--replica", str(k), "--out",
                              str(out)] + chunk) == 0
    written.append(sf.read(str(out / "song" / "vocals.wav"))[0])
  assert not np.array_equal(written[0], written[1])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_each_holding_a_replica_train_like_one_process(run, tmp_path, cache_dir):
  """2 processes x 2 CPU devices (jax.distributed on localhost): the 2 x 2 mesh puts replica k on
  process k's devices, so each process makes only its replica's batches and validates only its
  replica; after 2 updates the run holds the parameters of the one-process run (the ``run``
  fixture, a 2 x 1 mesh) to float rounding (measured 1.9e-7, tolerance 2e-6)."""
  overrides = {"data.name": "random", "model.levels": 1, "replicas": R, "optimizer.name": "sgd",
               "optimizer.learning_rate": 0.05, "num_train_steps": 2, "eval_every_steps": 2,
               "checkpoint_every_steps": 2, "compilation_cache_dir": cache_dir}
  workdir = str(tmp_path / "run")
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO,
               TF_CPP_MIN_LOG_LEVEL="2", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    env.pop("XLA_FLAGS", None)
    procs.append(subprocess.Popen(
        [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={workdir}",
         *[f"--config.{k}={v}" for k, v in overrides.items()]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  assert "replica x data = 2 x 2: 2 replicas (seeds 0..1), 1 per device" in logs[0], logs[0][-3000:]
  assert "step 2 validation per replica: replica_0" in logs[0]
  meta = json.load(open(os.path.join(workdir, "checkpoints", "2", "meta", "metadata")))
  assert (meta["devices"], meta["processes"], meta["replicas"]) == (4, 2, R)
  reference_meta = json.load(open(os.path.join(run, "checkpoints", "2", "meta", "metadata")))
  np.testing.assert_allclose(meta["validation"]["val/sdr"],
                             reference_meta["validation"]["val/sdr"], rtol=1e-4)
  ours, theirs = _read_step(workdir, 2), _read_step(run, 2)
  variables = [k for k in theirs if k.startswith("variables")]
  difference = _relative_difference([theirs[k] for k in variables], [ours[k] for k in variables])
  print(f"2 processes x 2 devices vs 1 x 2: {difference:.2e}")
  assert difference <= 2e-6
