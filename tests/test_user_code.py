"""User code in every tool: --import=MODULE, the modules a saved model records, the errors.

A user's module (in tmp_path, never imported by the test process itself: its registrations would
leak into the other tests) registers a mask and a backbone. One smoke-sized run, trained by
``train.py --import=<module name>`` from the module's folder, is shared by the tests of this file;
it is then evaluated (``eval.py --import=<path>.py`` on stempeg's 6 s excerpt), separated
(``python -m resunet_jax.separate``, without the flag: the error names the module and the flag;
with it: the stems) and compared (``python -m resunet_jax.compare --import=...``, which loads no
model: the flag is accepted so that one set of flags works for every tool). The rest is in-process.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from resunet_jax import models
from resunet_jax.cli import program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "resunet_user_masks"  # a name no other test imports
USER_CODE = '''"""A user's mask and backbone."""
import jax

from resunet_jax import backbones
from resunet_jax import masks


@masks.register("soft_gain", num_outputs=1)
def soft_gain(logits, mag, cos, sin):
  return mag * jax.nn.sigmoid(logits[..., 0]), cos, sin


@backbones.register("my_resunet")
def my_resunet(model, x, train):
  return backbones.resunet(model, x, train)
'''


def run(args, cwd, timeout=600):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO,
             TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, training_compilation_cache):
  """(folder of the user's module, work directory of a 2-step run with its mask and backbone)."""
  user = tmp_path_factory.mktemp("user")
  (user / f"{MODULE}.py").write_text(USER_CODE)
  workdir = user / "run"
  proc = run([os.path.join(REPO, "train.py"), f"--config={REPO}/configs/smoke.py",
              f"--workdir={workdir}", f"--import={MODULE}", "--config.model.mask=soft_gain",
              "--config.model.backbone=my_resunet", "--config.data.name=random",
              "--config.model.levels=1", "--config.num_train_steps=2",
              "--config.eval_every_steps=0", "--config.checkpoint_every_steps=2",
              f"--config.compilation_cache_dir={training_compilation_cache}"], cwd=user)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return user, workdir


def test_the_checkpoint_records_the_modules_of_its_mask_and_backbone(trained):
  _, workdir = trained
  with open(workdir / "checkpoints" / "2" / "model" / "metadata") as f:
    desc = json.load(f)
  assert desc["model"]["mask"] == "soft_gain" and desc["model"]["backbone"] == "my_resunet"
  assert desc["modules"] == {"mask": MODULE, "backbone": MODULE}


def test_separate_needs_the_flag_and_works_with_it(trained, tmp_path):
  user, workdir = trained
  song = tmp_path / "song.wav"
  sf.write(song, (0.1 * np.random.default_rng(0).standard_normal((44100, 2))).astype(np.float32),
           44100)
  args = ["-m", "resunet_jax.separate", str(song), "--checkpoint", str(workdir),
          "--out", str(tmp_path / "out"), "--quiet"]
  proc = run(args, cwd=tmp_path)
  assert proc.returncode == 2
  assert (f"model field 'mask': 'soft_gain' is not one of" in proc.stderr
          and f"module '{MODULE}' registers: import it first (the command-line tools: "
          f"--import={MODULE}" in proc.stderr), proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
  proc = run(args + [f"--import={user / MODULE}.py"], cwd=tmp_path)  # a path, from elsewhere
  assert proc.returncode == 0, proc.stderr[-2000:]
  estimate, rate = sf.read(tmp_path / "out" / "song" / "vocals.wav")
  assert rate == 44100 and estimate.shape == (44100, 2)


def test_eval_and_compare_with_the_flag(trained, tmp_path):
  pytest.importorskip("stempeg")
  from resunet_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  user, workdir = trained
  synthetic.add_stempeg_example(str(tmp_path / "manual"), "stem")
  proc = run([os.path.join(REPO, "eval.py"), f"--import={user / MODULE}.py",
              f"--workdir={workdir}", f"--manual_dir={tmp_path / 'manual'}",
              f"--data_dir={tmp_path / 'tfds'}", "--variant=stem", "--workers=0",
              "--chunk_seconds=2"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "eval" / "step_2" / "test" / "summary.json") as f:
    summary = json.load(f)
  assert summary["model"]["authors"]["vocals"]["tracks"] == 1
  # compare reads scores, not models: --import is accepted (and imports), nothing else changes.
  proc = run(["-m", "resunet_jax.compare", str(workdir), str(workdir), f"--import={MODULE}",
              "--out", str(tmp_path / "cmp"), "--bootstrap", "100", "--no_plot"], cwd=user)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[1] run@2#1" in proc.stdout and "[2] run@2#2" in proc.stdout
  assert (tmp_path / "cmp" / "summary.csv").exists()


def test_a_module_that_cannot_be_imported_stops_the_tool_naming_it(tmp_path, capsys):
  from resunet_jax import compare  # pylint: disable=g-import-not-at-top
  from resunet_jax.cli import separate as separate_cli  # pylint: disable=g-import-not-at-top
  out, bad = str(tmp_path / "out"), "--import=no_such_mod"
  for main, argv in ((compare.main, [str(tmp_path), str(tmp_path)]),
                     (separate_cli.main, [str(tmp_path), "--checkpoint", str(tmp_path)])):
    assert main(argv + ["--out", out, bad]) == 2
    assert ("error: --import=no_such_mod: cannot import it: ModuleNotFoundError: No module named "
            "'no_such_mod'" in capsys.readouterr().err)
  assert not (tmp_path / "out").exists()


def test_import_user_modules_by_name_and_by_path(tmp_path, monkeypatch):
  (tmp_path / "resunet_user_plain.py").write_text("VALUE = 7\n")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "resunet_user_helper.py").write_text("HELP = 3\n")
  (tmp_path / "sub" / "resunet_user_byfile.py").write_text(
      "import resunet_user_helper\nVALUE = resunet_user_helper.HELP + 1\n")
  (tmp_path / "resunet_user_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  for name in ("resunet_user_plain", "resunet_user_byfile", "resunet_user_helper"):
    monkeypatch.delitem(sys.modules, name, raising=False)
  (plain,) = program.import_user_modules(["resunet_user_plain"])
  assert plain.VALUE == 7
  (byfile,) = program.import_user_modules([str(tmp_path / "sub" / "resunet_user_byfile.py")])
  assert byfile.VALUE == 4 and sys.modules["resunet_user_byfile"] is byfile
  assert program.import_user_modules(["sub/resunet_user_byfile.py"]) == [byfile]  # once
  with pytest.raises(program.UserModuleError, match=r"--import=resunet_user_absent: cannot "
                     r"import it: ModuleNotFoundError.*a module name importable"):
    program.import_user_modules(["resunet_user_absent"])
  with pytest.raises(program.UserModuleError, match=r"--import=missing\.py: cannot import it: "
                     r"FileNotFoundError: no such file"):
    program.import_user_modules(["missing.py"])
  with pytest.raises(program.UserModuleError) as e:  # the user's own error, with its traceback
    program.import_user_modules(["resunet_user_broken"])
  assert "RuntimeError: broken on purpose" in str(e.value) and "Traceback" in str(e.value)
  with pytest.raises(SystemExit) as e:
    program.import_user_modules(["resunet_user_absent"], exit_on_error=True)
  assert e.value.code == 2


def test_loading_a_model_without_its_module_names_it_and_old_descriptions_load():
  model = models.build_model("mobilenet_subbandtime", width=0.25, levels=2)
  desc = models.describe(model, arch="mobilenet_subbandtime")
  assert desc["modules"] == {"mask": "resunet_jax.masks", "backbone": "resunet_jax.backbones"}
  old = {k: v for k, v in desc.items() if k != "modules"}  # written before modules were recorded
  assert models.from_description(old) == models.from_description(desc)
  user = json.loads(json.dumps(desc))
  user["model"]["backbone"], user["modules"]["backbone"] = "my_unet", "lab.unets"
  with pytest.raises(models.ModelFieldError, match=r"'my_unet' is not one of \['mobilenet', "
                     r"'resunet'\]; the model was saved with the backbone that module 'lab.unets' "
                     r"registers: import it first \(the command-line tools: --import=lab.unets; "
                     r"Python: import lab.unets\)"):
    models.from_description(user)
  del user["modules"]
  with pytest.raises(models.ModelFieldError, match="if a module of yours registers it, import "
                     "that first"):
    models.from_description(user)
  user["model"]["backbone"], user["model"]["mask"] = "resunet", "soft"
  user["modules"] = {"mask": "__main__"}
  with pytest.raises(models.ModelFieldError, match="cannot be imported by name: move the "
                     "registration into a module"):
    models.from_description(user)


def test_training_without_the_flag_names_it():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.model.mask = "soft_gain"
  with pytest.raises(ValueError, match=r"config.model.mask: 'soft_gain' is not one of \[.*\] \(a "
                     r"mask of your own: register it in a module and import that first; the "
                     r"command-line tools: --import=MODULE\)"):
    loop.check_config(config)
