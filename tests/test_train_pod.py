"""What a multi-host run relies on, tested in one process: the batch rule, the recipe check on
resume and the config history, falling back from a damaged checkpoint, no host transfer per step,
synchronised BatchNorm in one all-reduce per layer, process agreement on the work directory."""
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import smoke  # noqa: E402
from resunet_jax import layers  # noqa: E402
from resunet_jax.training import checkpointing  # noqa: E402
from resunet_jax.training import distributed  # noqa: E402
from resunet_jax.training import history  # noqa: E402
from resunet_jax.training import loop  # noqa: E402
from resunet_jax.training import step as step_lib  # noqa: E402

pytestmark = pytest.mark.usefixtures("training_compilation_cache")


def _config(cache, **overrides):
  config = smoke.get_config()
  config.data.name = "random"
  config.model.levels = 1
  config.num_train_steps = 3
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 10
  config.compilation_cache_dir = cache
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize("batch,devices,processes,message", [
    (12, 8, 1, "must be a multiple of 8 (nearest valid: 8 or 16)"),
    (16, 24, 3, "24 devices (3 processes x 8): it must be a multiple of 24 (nearest valid: 24)"),
    (270, 64, 8, "multiple of 64 (nearest valid: 256 or 320)"),
])
def test_global_batch_rule_names_the_rule_and_the_nearest_sizes(batch, devices, processes,
                                                                message):
  with pytest.raises(ValueError, match=r"config.global_batch_size=\d+ cannot be split") as e:
    step_lib.check_global_batch(batch, devices, processes)
  assert message in str(e.value)
  step_lib.check_global_batch(256, 64, 8)  # fine


def test_a_batch_that_does_not_divide_stops_before_anything_is_written(tmp_path,
                                                                      training_compilation_cache):
  config = _config(training_compilation_cache, global_batch_size=12)
  with pytest.raises(ValueError, match=r"multiple of 8 \(nearest valid: 8 or 16\)"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_resume_with_a_changed_recipe_is_refused_naming_the_keys(tmp_path,
                                                                 training_compilation_cache):
  cache = training_compilation_cache
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(_config(cache, num_train_steps=1), workdir)
  changed = _config(cache, num_train_steps=2, **{"optimizer.learning_rate": 1e-2,
                                                 "global_batch_size": 16,
                                                 "model.mask": "irm"})
  with pytest.raises(history.ConfigChangedError) as e:
    loop.train_and_evaluate(changed, workdir)
  text = str(e.value)
  for line in ("global_batch_size: 8 -> 16", "model.mask: None -> 'irm'",
               "optimizer.learning_rate: 0.003 -> 0.01", "--accept_config_changes"):
    assert line in text, text
  assert "num_train_steps" not in text  # extending a run is not a recipe change
  # Nothing was trained by the refused start, and it is not in the history.
  assert len(history.starts(workdir)) == 1
  # Extending the run (not a recipe change) resumes; every start is recorded, config.json is the
  # first start's.
  loop.train_and_evaluate(_config(cache, num_train_steps=2), workdir)
  starts = history.starts(workdir)
  assert [s["resumed_from_step"] for s in starts] == [None, 1]
  assert [s["config"]["num_train_steps"] for s in starts] == [1, 2]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_train_steps"] == 1
  # Accepted changes resume and are recorded.
  accepted = _config(cache, num_train_steps=3, **{"optimizer.learning_rate": 1e-2})
  state = loop.train_and_evaluate(accepted, workdir, accept_config_changes=True)
  assert int(state.step) == 3
  assert history.starts(workdir)[-1]["config"]["optimizer"]["learning_rate"] == 1e-2


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path,
                                                                    training_compilation_cache):
  cache = training_compilation_cache
  reference = loop.train_and_evaluate(_config(cache), str(tmp_path / "reference"))
  workdir = tmp_path / "run"
  loop.train_and_evaluate(_config(cache), str(workdir))
  # Damage every array file of step 3's variables (as a truncated upload would).
  damaged = 0
  for root, _, files in os.walk(workdir / "checkpoints" / "3" / "variables"):
    for name in files:
      if "metadata" not in name and not name.startswith("_"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"\0")
        damaged += 1
  assert damaged
  state = loop.train_and_evaluate(_config(cache, num_train_steps=4), str(workdir))
  assert int(state.step) == 4
  aside = os.listdir(workdir / checkpointing.UNRESTORABLE_DIR)
  assert len(aside) == 1 and aside[0].startswith("3-")
  assert history.starts(str(workdir))[-1]["resumed_from_step"] == 3  # what process 0 saw first
  # Step 3 was trained again from step 2 and equals the uninterrupted run's.
  redone = loop.train_and_evaluate(_config(cache, num_train_steps=3), str(tmp_path / "copy"))
  np.testing.assert_array_equal(np.asarray(redone.params["bn0"]["scale"]),
                                np.asarray(reference.params["bn0"]["scale"]))


def test_the_loop_reads_device_values_only_at_report_and_save_points(tmp_path, monkeypatch,
                                                                    training_compilation_cache):
  calls = []
  real = loop._read_metrics  # pylint: disable=protected-access

  def counting(metrics):
    calls.append(1)
    return real(metrics)
  monkeypatch.setattr(loop, "_read_metrics", counting)
  to_host = []
  real_to_host = step_lib.to_host
  monkeypatch.setattr(step_lib, "to_host", lambda x: to_host.append(1) or real_to_host(x))
  config = _config(training_compilation_cache, num_train_steps=8, log_every_steps=4,
                   checkpoint_every_steps=0)
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  # Reports at steps 4 and 8 (8 is also the final save): two reads of the accumulated metrics,
  # three values each, and nothing else read from the devices during the 8 updates.
  assert len(calls) == 2
  assert len(to_host) == 2 * 3


def _batchnorm_all_reduces(devices):
  mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))
  bn = layers.BatchNorm(axis_name="data")
  x = np.random.default_rng(0).standard_normal((8, 6, 5, 3)).astype(np.float32)
  variables = bn.init(jax.random.PRNGKey(0), x, train=False)
  fn = jax.shard_map(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]),
                     mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()),
                     check_vma=False)
  x = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
  return jax.jit(fn).lower(variables, x).as_text().count("all_reduce")


def test_synchronised_batchnorm_is_one_all_reduce_per_layer_and_equals_two_pass():
  assert _batchnorm_all_reduces(jax.devices()[:4]) == 1
  assert _batchnorm_all_reduces(jax.devices()[:1]) == 0
  # Equal to the global batch's two-pass statistics within float32 rounding, also for data whose
  # mean is large against its spread (where E[x^2] - E[x]^2 loses digits) once the running mean
  # (the shift) is near the data's mean.
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Explicit,))
  rng = np.random.default_rng(1)
  for offset, running in ((0.0, 0.0), (30.0, 29.5)):
    x = (rng.standard_normal((8, 6, 5, 3)) + offset).astype(np.float32)
    bn, bn_sync = layers.BatchNorm(momentum=0.5), layers.BatchNorm(momentum=0.5, axis_name="data")
    variables = bn.init(jax.random.PRNGKey(0), x, train=False)
    variables = {**variables, "batch_stats": {"mean": jnp.full((3,), running, jnp.float32),
                                              "var": jnp.ones((3,), jnp.float32)}}
    apply = lambda m, v, x: m.apply(v, x, train=True, mutable=["batch_stats"])  # noqa: E731
    want_y, want = apply(bn, variables, x)
    x = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
    y, got = jax.jit(jax.shard_map(functools.partial(apply, bn_sync), mesh=mesh,
                                   in_specs=(P(), P("data")), out_specs=(P("data"), P()),
                                   check_vma=False))(
                                       variables, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want_y), atol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_a_single_process_agrees_with_itself(tmp_path):
  from resunet_jax import fileutil  # pylint: disable=g-import-not-at-top
  assert distributed.check_shared_workdir(fileutil.as_path(tmp_path), 7) == 7
  assert distributed.all_processes(3) == [3]


def test_a_profiler_trace_on_request(tmp_path, training_compilation_cache):
  workdir = tmp_path / "run"
  config = _config(training_compilation_cache, num_train_steps=6, profile_steps=2,
                   profile_first_step=2, checkpoint_every_steps=0)
  loop.train_and_evaluate(config, str(workdir))
  traces = [os.path.join(root, f) for root, _, files in os.walk(workdir) for f in files
            if f.endswith(".xplane.pb")]
  assert traces, sorted(os.listdir(workdir))


def test_log_dir_keeps_every_log_line_including_orbax_info(tmp_path, training_compilation_cache):
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
       "--config.data.name=random", "--config.model.levels=1", "--config.num_train_steps=1",
       f"--config.compilation_cache_dir={training_compilation_cache}",
       f"--log_dir={tmp_path / 'logs'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (tmp_path / "logs" / "resunet_train.INFO").read_text()
  assert "orbax-checkpoint version" in text and "step 1/1" in text
  assert "step 1/1" in proc.stderr  # and still on the console
