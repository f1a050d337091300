"""Locations are URLs: training, model directories, TFDS data and evaluation on gs://.

Everything runs against a local Google Cloud Storage emulator (``tests/remote_storage.py``: a child
process on 127.0.0.1, with a TLS proxy for TensorFlow's GCS client), under a network guard: every
test fails if this process (or a child started by ``remote_storage.guarded_python``) tries to reach
anything but loopback, and the module fails if the proxy was asked for a host other than Google's
storage hosts (which it hands to the emulator). The training run is the smoke config on random data
with a one-level model: 2 updates into ``gs://bucket/run``, then a resume to 4, compared with one
uninterrupted local run of 4 updates.
"""
import importlib.util
import json
import os
import sys
import time

import jax
import numpy as np
import pytest

import remote_storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import smoke  # noqa: E402
from resunet_jax import checkpoint  # noqa: E402
from resunet_jax import fileutil  # noqa: E402
from resunet_jax.training import loop  # noqa: E402

BUCKET = "bucket"
RUN = f"gs://{BUCKET}/run"
MODEL = f"gs://{BUCKET}/model"
STEPS = 4
NEEDED = ("gcp_storage_emulator", "google.cloud.storage", "cryptography")


@pytest.fixture(scope="module")
def guard():
  """This module's network guard (installed for all of its tests)."""
  installed = remote_storage.NetGuard().install()
  yield installed
  installed.uninstall()


@pytest.fixture(autouse=True)
def no_network(guard):
  before = len(guard.attempts)
  yield
  assert guard.attempts[before:] == [], "non-loopback network attempts"


@pytest.fixture(scope="module")
def gcs(guard):
  del guard  # installed first
  missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[test,gcs]')")
  with remote_storage.gcs_server(BUCKET) as server:
    yield server
  assert server.refused == [], f"the proxy refused (hosts other than Google storage's): " \
                              f"{server.refused}"


@pytest.fixture(scope="module")
def jax_cache_settings():
  """The runs here move JAX's persistent compilation cache (to the bucket); restored after."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache every compilation
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  cc.reset_cache()


def _config(**overrides):
  config = smoke.get_config()
  config.data.name = "random"
  config.model.levels = 1
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = 2
  config.eval_every_steps = STEPS
  config.compilation_cache_dir = "auto"
  config.update_from_flattened_dict(overrides)
  return config


class _CacheHits:
  """Counts JAX's persistent-cache hits while active."""

  def __init__(self):
    self.hits = 0

  def _listener(self, event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      self.hits += 1

  def __enter__(self):
    jax.monitoring.register_event_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_listener(self._listener)


def _arrays(step_dir):
  """{path: array} of the variables and train state of one checkpoint step (path or URL)."""
  out = {}
  for item in ("variables", "train"):
    tree = checkpoint.restore_item(fileutil.join(step_dir, item))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[item + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


@pytest.fixture(scope="module")
def runs(gcs, jax_cache_settings, tmp_path_factory):
  """2 updates in gs://bucket/run, a resume there to 4; an uninterrupted local run of 4 whose
  compilation cache is the bucket's (config.compilation_cache_dir as a URL)."""
  del gcs, jax_cache_settings
  times = {}
  t = time.perf_counter()
  loop.train_and_evaluate(_config(num_train_steps=2), RUN)
  times["first"] = time.perf_counter() - t
  t = time.perf_counter()
  with _CacheHits() as resume_hits:
    loop.train_and_evaluate(_config(), RUN)
  times["resume"] = time.perf_counter() - t
  local = str(tmp_path_factory.mktemp("local") / "run")
  t = time.perf_counter()
  with _CacheHits() as local_hits:
    loop.train_and_evaluate(_config(compilation_cache_dir=f"{RUN}/xla_cache"), local)
  times["local"] = time.perf_counter() - t
  print(f"\ntraining: gs 2 updates {times['first']:.1f} s, gs resume to {STEPS} "
        f"{times['resume']:.1f} s, local {STEPS} updates {times['local']:.1f} s")
  return {"local": local, "resume_hits": resume_hits.hits, "local_hits": local_hits.hits}


@pytest.fixture(scope="module")
def gcs_model(runs):
  """gs://bucket/model: a model directory written from the run's selected step."""
  del runs
  model, variables, desc = checkpoint.load_model(RUN)
  assert checkpoint.save_model(MODEL, model, variables, arch=desc["arch"],
                               sources=desc["sources"]) == MODEL
  return model, variables


@pytest.mark.slow
def test_training_in_a_gcs_workdir_resumes_exactly(runs):
  from etils import epath  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  run = epath.Path(RUN)
  # Checkpoints (Orbax, finalised by a commit marker on object stores) at 2 and 4.
  steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, STEPS]
  assert not list((run / "checkpoints").glob("*tmp*"))
  # Config and its history: the first start and the resume.
  assert json.loads((run / "config.json").read_text())["num_train_steps"] == 2
  history = [json.loads(p.read_text()) for p in sorted((run / "config_history").glob("*.json"))]
  assert [h["resumed_from_step"] for h in history] == [None, 2]
  # TensorBoard event files of both starts, with the loss of every update.
  events = sorted(str(p) for p in run.glob("events.out.tfevents.*"))
  assert len(events) == 2
  loss_steps, tags = [], set()
  for path in events:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.add(value.tag)
        if value.tag == "train/loss":
          loss_steps.append(event.step)
  assert sorted(loss_steps) == list(range(1, STEPS + 1))
  assert "val/sdr" in tags and "val/estimate_vocals" in tags  # validation scalars and audio
  # The XLA compilation cache in the work directory, read back by the resume and the local run.
  assert len(list((run / "xla_cache").iterdir())) > 0
  assert runs["resume_hits"] > 0 and runs["local_hits"] > 0
  # Resumed on gs:// == uninterrupted locally: every array of step 4, bit for bit.
  remote = _arrays(f"{RUN}/checkpoints/{STEPS}")
  local = _arrays(os.path.join(runs["local"], "checkpoints", str(STEPS)))
  assert sorted(remote) == sorted(local)
  worst = max(float(np.max(np.abs(remote[k].astype(np.float64) - local[k].astype(np.float64))))
              for k in local if local[k].size)
  print(f"largest difference gs resume vs local run: {worst}")
  assert all(remote[k].dtype == local[k].dtype and np.array_equal(remote[k], local[k])
             for k in local)


@pytest.mark.slow
def test_model_directories_on_gcs(runs, gcs_model, tmp_path):
  # The first start validated at its end (step 2), the resume at 4; the better one is read.
  model, variables, desc = checkpoint.load_model(RUN)
  step = desc["metadata"]["step"]
  assert step == checkpoint.select_step(RUN) and step in (2, STEPS)
  assert desc["metadata"]["checkpoint"] == f"{RUN}/checkpoints/{step}"
  reference = _arrays(os.path.join(runs["local"], "checkpoints", str(step)))
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    np.testing.assert_array_equal(np.asarray(leaf),
                                  reference["variables" + jax.tree_util.keystr(path)])
  assert checkpoint.is_loadable(RUN) and checkpoint.is_loadable(f"{RUN}/checkpoints/{STEPS}")
  assert not checkpoint.is_loadable(f"gs://{BUCKET}/nothing")

  assert checkpoint.is_model_dir(MODEL)  # written by gcs_model from this run
  _, back, back_desc = checkpoint.load_model(MODEL)
  assert back_desc["sources"] == ["vocals"]
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileExistsError, match="exists"):
    checkpoint.save_model(MODEL, model, variables)
  # Written without its commit marker (model.json), a folder is not a model directory.
  half = f"gs://{BUCKET}/half_written"
  checkpoint.save_model(half, model, variables)
  fileutil.as_path(half).joinpath(checkpoint.MODEL_JSON).unlink()
  assert not checkpoint.is_loadable(half)
  with pytest.raises(ValueError, match="neither a model directory"):
    checkpoint.load_model(half)
  checkpoint.save_model(half, model, variables, overwrite=True)  # replaces what is there
  assert checkpoint.is_model_dir(half)

  # Fine-tuning starts from a model directory on gs:// (train.py --init_from=gs://...).
  state = loop.train_and_evaluate(_config(num_train_steps=0), str(tmp_path / "finetune"),
                                  init_from=MODEL)
  for a, b in zip(jax.tree_util.tree_leaves(state.params),
                  jax.tree_util.tree_leaves(variables["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_separate_command_reads_a_gcs_model(gcs_model, tmp_path):
  """``python -m resunet_jax.separate --checkpoint gs://...`` (the outputs stay local)."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  del gcs_model
  t = np.arange(44100) / 44100
  sf.write(str(tmp_path / "song.wav"), np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1) * 0.3,
           44100)
  out = remote_storage.guarded_python(
      ["-m", "resunet_jax.separate", str(tmp_path / "song.wav"), "--checkpoint", MODEL,
       "--out", str(tmp_path / "out"), "--quiet", "--residual"], timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out" / "song")) == ["accompaniment.wav", "vocals.wav"]


@pytest.mark.slow
def test_tfds_data_and_evaluation_on_gcs(gcs_model, tmp_path):
  """The built-in data set built into a gs:// TFDS data_dir (the segment cache stays local), and
  eval.py's work on it with a gs:// model: results under <model>/eval/<split> on the bucket."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from resunet_jax import evaluation  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top
  del gcs_model
  data = recipes.default_data_config()
  data.data_dir = f"gs://{BUCKET}/tfds"
  data.cache_dir = str(tmp_path / "segment_cache")
  t = time.perf_counter()
  builder = prepare.prepare(data)
  built = time.perf_counter() - t
  assert str(builder.data_dir).startswith(data.data_dir)
  cache = prepare.training_cache(data)
  assert len(cache.names) == 4 and os.path.isdir(data.cache_dir)
  t = time.perf_counter()
  excerpt = "The Easton Ellises - Falcon 69"
  evaluation.evaluate_checkpoint(
      MODEL, data, split="test", track_names=[excerpt], oracles=("irm",),
      oracle_targets=("vocals",), chunk_seconds=2.0, workers=0, save_estimates=True,
      progress=False, log=None)
  print(f"\nTFDS build into gs:// {built:.1f} s, evaluation {time.perf_counter() - t:.1f} s")
  eval_dir = epath.Path(MODEL) / "eval" / "test"
  for name in ("settings.json", "summary.json", "summary.csv", f"model/authors/test/{excerpt}.json",
               f"oracle_irm/authors/test/{excerpt}.json", f"oracle_stats/test/{excerpt}.json",
               f"model/estimates/{excerpt}/vocals.wav", "model/authors/tracks.csv"):
    assert (eval_dir / name).exists(), name
  summary = json.loads((eval_dir / "summary.json").read_text())
  assert np.isfinite(summary["oracle_irm"]["authors"]["vocals"]["SDR"])


def test_unusable_locations_are_refused_up_front(tmp_path, monkeypatch):
  """s3:// (Orbax 0.12's TensorStore spec for it is wrong, TF has no s3 file system) and a remote
  segment cache are refused before anything is written, naming the flag or key; no local folder
  named ``s3:`` appears."""
  from resunet_jax import evaluation  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"--workdir=s3://bucket/run: s3:// URLs cannot be used: "
                                       r"Orbax .*TensorFlow has no s3"):
    loop.train_and_evaluate(_config(), "s3://bucket/run")
  for key, value, message in (
      ("data.cache_dir", "gs://bucket/cache", "config.data.cache_dir=.*local disk"),
      ("data.cache_dir", "s3://bucket/cache", "config.data.cache_dir=.*local disk"),
      ("data.data_dir", "s3://bucket/tfds", "config.data.data_dir=s3://bucket/tfds: s3://"),
      ("data.manual_dir", "gs://bucket/musdb", "config.data.manual_dir=.*local path"),
      ("compilation_cache_dir", "s3://bucket/xla", "config.compilation_cache_dir=s3://")):
    with pytest.raises(ValueError, match=message):
      loop.check_config(_config(**{key: value}))
  with pytest.raises(ValueError, match="--init_from=s3://"):
    loop.train_and_evaluate(_config(), str(tmp_path / "run"), init_from="s3://bucket/model")
  with pytest.raises(ValueError, match="checkpoint=s3://bucket/m: s3://"):
    checkpoint.load_model("s3://bucket/m")
  with pytest.raises(ValueError, match="model directory=s3://"):
    checkpoint.save_model("s3://bucket/m", None, {})
  with pytest.raises(ValueError, match="eval_dir=s3://"):
    evaluation.evaluate(evaluation.InMemoryTracks([]), "s3://bucket/eval", oracles=("irm",))
  with pytest.raises(ValueError, match="checkpoint=hdfs://"):
    checkpoint.load_model("hdfs://namenode/m")
  assert os.listdir(tmp_path) == []  # nothing written: no work directory, no folder "s3:"


def test_the_network_guard_refuses_and_records(tmp_path):
  """The guard itself: Python-level connects and lookups of non-loopback addresses fail (here and
  in a guarded child, whose exit status is then 3); loopback passes."""
  import socket  # pylint: disable=g-import-not-at-top
  own = remote_storage.NetGuard().install()
  try:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="network guard"):
      sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    with pytest.raises(socket.gaierror, match="network guard"):
      socket.getaddrinfo("metadata.google.internal", 80)
    assert socket.getaddrinfo("localhost", 80)
  finally:
    own.uninstall()
  assert own.attempts == ["connect ('192.0.2.1', 80)", "getaddrinfo 'metadata.google.internal'"]
  script = tmp_path / "reach_out.py"
  script.write_text("import socket\ntry:\n  socket.socket().connect(('192.0.2.1', 80))\n"
                    "except ConnectionRefusedError as e:\n  print(e)\n")
  out = remote_storage.guarded_python([str(script)], timeout=120)
  assert out.returncode == 3 and "192.0.2.1" in out.stderr


def test_url_locations_are_never_made_local_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fileutil.join("gs://b/run", "checkpoints", "4") == "gs://b/run/checkpoints/4"
  assert fileutil.join("run", "a") == os.path.join("run", "a")
  assert str(fileutil.as_path("gs://b/run") / "x") == "gs://b/run/x"
  assert str(fileutil.as_path("run")) == str(tmp_path / "run")
  assert [fileutil.url_scheme(x) for x in ("gs://b", "S3://b", "/a/b", "")] == ["gs", "s3", None,
                                                                              None]
  for fine in ("", None, "/local/path", "relative", "gs://bucket/run"):
    fileutil.check_location(fine, "--flag")
  with pytest.raises(ValueError, match="--flag=gs://b/x: must be a local path: why"):
    fileutil.check_location("gs://b/x", "--flag", local_only="why")
  assert os.listdir(tmp_path) == []
