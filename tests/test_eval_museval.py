"""Evaluation: museval's numbers, the two protocols, medians, resuming, parallel scoring, oracles.

The real MUSDB18 track is stempeg's 6 s excerpt of "The Easton Ellises - Falcon 69" (a test
track), read through the data pipeline from a MUSDB-shaped folder that holds only it.
"""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
import soundfile as sf

from resunet_jax import checkpoint
from resunet_jax import evaluation
from resunet_jax import models
from resunet_jax import separate
from resunet_jax import spectral

SMALL = dict(width=0.125, levels=3, blocks_per_stage=1, center_blocks=1)
EXCERPT = "The Easton Ellises - Falcon 69"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def excerpt_data(tmp_path_factory):
  """A data config whose manual dir holds only test/<excerpt>.stem.mp4, and the track itself."""
  pytest.importorskip("stempeg")
  from resunet_jax.data import heldout  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top
  from resunet_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("excerpt")
  synthetic.add_stempeg_example(str(root / "manual"), "stem")
  cfg = recipes.default_data_config()
  cfg.manual_dir, cfg.data_dir = str(root / "manual"), str(root / "tfds")
  (track,) = list(heldout.eval_tracks(cfg, "test"))
  return cfg, track


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  model = models.build_model("resunet143_ismir2021", **SMALL)
  # rbg: compiling init with threefry takes ~35 s on 2 cores; the weights' values do not matter.
  variables = models.init_variables(model, jax.random.key(0, impl="rbg"))
  return checkpoint.save_model(str(tmp_path_factory.mktemp("model") / "vocals"), model, variables,
                               arch="resunet143_ismir2021", sources=["vocals"])


def gain_separator(gain=0.5, sources=("vocals",)):
  """A stand-in separator: every source estimate is gain * mixture."""
  plan = separate.make_plan("crossfade", 1.0, 0.25)
  fn = lambda x: np.stack([np.float32(gain) * x] * len(sources), axis=1)
  return separate.SongSeparator(fn, list(sources), plan)


def cut(track, seconds=3.0, name=None):
  """The first seconds of a track (scoring time grows with length)."""
  n = int(seconds * 44100)
  return {"name": name or track["name"], "mixture": track["mixture"][:n],
          "stems": {t: v[:n] for t, v in track["stems"].items()}, "sample_rate": 44100}


def frames(track_json, target, metric="SDR"):
  (t,) = [t for t in track_json["targets"] if t["name"] == target]
  return np.array([np.nan if f["metrics"][metric] is None else float(f["metrics"][metric])
                   for f in t["frames"]])


def test_eval_gives_the_numbers_of_museval_called_directly(excerpt_data, model_dir, tmp_path):
  import museval  # pylint: disable=g-import-not-at-top
  import musdb  # pylint: disable=g-import-not-at-top
  cfg, track = excerpt_data
  eval_dir = str(tmp_path / "eval")
  summary = evaluation.evaluate_checkpoint(
      model_dir, cfg, eval_dir=eval_dir, protocols=("authors", "sisec_joint"), residual=True,
      chunk_seconds=2.0, workers=0, save_estimates=True, progress=False, log=None)
  estimates = {t: sf.read(os.path.join(eval_dir, "model", "estimates", EXCERPT, t + ".wav"),
                          dtype="float32")[0] for t in ("vocals", "accompaniment")}
  assert np.abs(estimates["vocals"]).max() > 1e-4  # a real (random) separation, not silence
  # The authors' protocol: each target alone, as bytesep's callback calls museval.
  for t in ("vocals", "accompaniment"):
    sdr, isr, sir, sar = museval.evaluate([track["stems"][t]], [estimates[t]])
    for metric, values in (("SDR", sdr), ("ISR", isr), ("SAR", sar)):
      assert summary["model"]["authors"][t][metric] == pytest.approx(np.nanmedian(values[0]),
                                                                     abs=1e-4)
  # SiSEC 2018: museval's own per-track function on the musdb track (decoded by stempeg).
  mus_track = musdb.DB(root=cfg.manual_dir, subsets="test").tracks[0]
  direct = json.loads(museval.eval_mus_track(mus_track, estimates).json)
  with open(evaluation.track_json_path(eval_dir, "model", "sisec_joint", "test", EXCERPT)) as f:
    ours = json.load(f)
  for t in ("vocals", "accompaniment"):
    for metric in evaluation.METRICS:
      np.testing.assert_allclose(frames(ours, t, metric), frames(direct, t, metric), atol=2e-5)
      assert summary["model"]["sisec_joint"][t][metric] == pytest.approx(
          np.nanmedian(frames(direct, t, metric)), abs=1e-4)
  # The per-track files are museval's format: its own aggregation reads them back.
  store = museval.EvalStore()
  store.add_eval_dir(os.path.join(eval_dir, "model", "sisec_joint"))
  agg = store.agg_frames_tracks_scores()
  assert agg[("vocals", "SDR")] == pytest.approx(summary["model"]["sisec_joint"]["vocals"]["SDR"])
  with open(os.path.join(eval_dir, "summary.json")) as f:
    assert json.load(f)["model"]["authors"]["vocals"]["tracks"] == 1


def test_sisec_joint_scores_the_stems_together_like_eval_mus_track(excerpt_data):
  import museval  # pylint: disable=g-import-not-at-top
  import musdb  # pylint: disable=g-import-not-at-top
  cfg, track = excerpt_data
  rng = np.random.default_rng(0)
  estimates = {t: (track["stems"][t] + 0.02 * rng.standard_normal(track["mixture"].shape))
               .astype(np.float32) for t in ("vocals", "drums", "accompaniment")}
  assert evaluation.joint_groups(list(estimates)) == [["vocals", "drums"],
                                                      ["vocals", "accompaniment"]]
  ours = json.loads(evaluation.track_json(
      EXCERPT, evaluation.score_track(track["stems"], estimates, "sisec_joint")))
  mus_track = musdb.DB(root=cfg.manual_dir, subsets="test").tracks[0]
  direct = json.loads(museval.eval_mus_track(mus_track, estimates).json)
  for t in estimates:
    for metric in evaluation.METRICS:
      np.testing.assert_allclose(frames(ours, t, metric), frames(direct, t, metric), atol=2e-5)
  # Scored alone, drums keeps the windows where only the vocals are silent: the protocols differ.
  alone = evaluation.score_track(track["stems"], estimates, "authors")
  joint_nan = np.isnan(frames(ours, "drums"))
  alone_nan = np.isnan(alone["drums"]["SDR"])
  assert np.all(joint_nan >= alone_nan)


def test_protocols_refuse_what_they_cannot_score():
  with pytest.raises(ValueError, match="--residual"):
    evaluation.check_protocol("sisec_joint", ["vocals"])
  with pytest.raises(ValueError, match="not MUSDB18 sources"):
    evaluation.check_protocol("authors", ["residual"])
  evaluation.check_protocol("authors", ["vocals"])
  evaluation.check_protocol("sisec_joint", ["drums", "bass", "other", "vocals"])


def test_track_and_source_scores_are_medians_of_medians(tmp_path):
  # Median over windows (NaN ignored) per track, then median over tracks.
  values = {"a": [1.0, 2.0, np.nan, 10.0], "b": [5.0, np.nan], "c": [np.nan, 3.0, 4.0, 7.0, 0.0]}
  for name, sdr in values.items():
    scores = {"vocals": {m: np.array(sdr) for m in evaluation.METRICS}}
    path = evaluation.track_json_path(str(tmp_path), "model", "authors", "test", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(evaluation.track_json(name, scores))
  agg = evaluation.aggregate(str(tmp_path), "model", "authors", "test", list(values))
  assert {n: v["vocals"]["SDR"] for n, v in agg["tracks"].items()} == {"a": 2.0, "b": 5.0,
                                                                      "c": 3.5}
  assert agg["targets"]["vocals"]["SDR"] == 3.5 and agg["targets"]["vocals"]["tracks"] == 3


def test_a_rerun_skips_scored_tracks_and_resumes_the_rest(excerpt_data, tmp_path):
  _, track = excerpt_data
  tracks = evaluation.InMemoryTracks([cut(track), cut(track, 2.0, name="Second track")])
  eval_dir = str(tmp_path)
  kw = dict(protocols=("authors", "sisec_joint"), residual=True, workers=0, progress=False,
            log=None)
  first = evaluation.evaluate(tracks, eval_dir, separator=gain_separator(), **kw)
  paths = {(n, p): evaluation.track_json_path(eval_dir, "model", p, "test", n)
           for n in tracks.names() for p in kw["protocols"]}
  mtimes = {k: os.path.getmtime(p) for k, p in paths.items()}

  def must_not_run(x):
    raise AssertionError("a scored track was separated again")

  broken = separate.SongSeparator(must_not_run, ["vocals"], separate.make_plan())
  same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN
  assert same(evaluation.evaluate(tracks, eval_dir, separator=broken, **kw), first)
  # An interrupted run: one file missing. Only that one is written again.
  os.unlink(paths[("Second track", "sisec_joint")])
  again = evaluation.evaluate(tracks, eval_dir, separator=gain_separator(), **kw)
  assert same(again, first)
  changed = [k for k, p in paths.items() if os.path.getmtime(p) != mtimes[k]]
  assert changed == [("Second track", "sisec_joint")]
  # Different settings for the same method in the same folder are refused.
  with pytest.raises(ValueError, match="holds results of a different evaluation"):
    evaluation.evaluate(tracks, eval_dir, separator=gain_separator(), settings={
        "model": {"checkpoint": "another"}}, **kw)


def test_worker_processes_write_what_in_process_scoring_writes(excerpt_data, tmp_path):
  _, track = excerpt_data
  tracks = evaluation.InMemoryTracks([cut(track), cut(track, 2.5, name="Copy")])
  outs = []
  for workers in (0, 2):
    eval_dir = str(tmp_path / f"w{workers}")
    evaluation.evaluate(tracks, eval_dir, separator=gain_separator(0.3), workers=workers,
                        progress=True, log=None)
    with open(evaluation.track_json_path(eval_dir, "model", "authors", "test", "Copy")) as f:
      outs.append(f.read())
  assert outs[0] == outs[1]


def test_oracle_masks_on_constructed_stems():
  rng = np.random.default_rng(1)
  x = rng.uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
  stems = {"vocals": x, "drums": 0.5 * x, "bass": 2.0 * x}
  est, above = evaluation.oracle_estimates(x, stems, ["vocals", "drums", "bass"], "irm")
  np.testing.assert_allclose(est["vocals"], x, atol=1e-5)  # S = X: mask 1
  np.testing.assert_allclose(est["drums"], 0.5 * x, atol=1e-5)  # mask 0.5
  np.testing.assert_allclose(est["bass"], x, atol=1e-5)  # mask 2, clipped to 1
  assert above == {"vocals": 0.0, "drums": 0.0, "bass": 1.0}
  est, _ = evaluation.oracle_estimates(x, stems, ["bass"], "irm_unbounded")
  np.testing.assert_allclose(est["bass"], 2.0 * x, atol=1e-5)
  # A stem with its own phase: the complex ratio mask recovers it, bounded magnitude masks not.
  other = rng.uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
  est, _ = evaluation.oracle_estimates(x, {"other": other}, ["other"], "cirm")
  np.testing.assert_allclose(est["other"], other, atol=1e-4)


def test_oracle_irm_beats_a_random_mask(excerpt_data, tmp_path):
  _, track = excerpt_data
  summary = evaluation.evaluate(
      evaluation.InMemoryTracks([track]), str(tmp_path), oracles=("irm", "cirm"),
      oracle_targets=("vocals",), workers=0, progress=False, log=None)
  irm = summary["oracle_irm"]["authors"]["vocals"]["SDR"]
  cirm = summary["oracle_cirm"]["authors"]["vocals"]["SDR"]
  # A random magnitude mask in [0, 1] on the same STFT, scored the same way.
  x = np.asarray(track["mixture"]).T
  spec = np.asarray(spectral.stft(x, 2048, 441))
  mask = np.random.default_rng(2).uniform(0, 1, spec.shape)
  random_est = np.asarray(spectral.istft(mask * spec, 2048, 441, x.shape[-1])).T
  random_sdr = np.nanmedian(evaluation.score_track(
      track["stems"], {"vocals": random_est}, "authors")["vocals"]["SDR"])
  assert irm > random_sdr + 3.0, (irm, random_sdr)
  assert cirm > 80.0 > irm  # S / X applied to X is S: exact up to the STFT round trip
  fraction = summary["irm_above_one_mean_over_tracks"]["vocals"]
  assert 0.0 < fraction < 1.0


def test_eval_cli_resumes(excerpt_data, model_dir, tmp_path, capsys):
  cfg, _ = excerpt_data
  spec = importlib.util.spec_from_file_location("eval_main",
                                                os.path.join(os.path.dirname(HERE), "eval.py"))
  eval_main = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(eval_main)
  argv = ["eval.py", f"--checkpoint={model_dir}", f"--manual_dir={cfg.manual_dir}",
          f"--data_dir={cfg.data_dir}", f"--eval_dir={tmp_path}", "--workers=0",
          "--chunk_seconds=2"]
  for run in range(2):
    eval_main.FLAGS.unparse_flags()
    eval_main.main(eval_main.FLAGS(argv))
    out = capsys.readouterr().out
    assert ("0 already scored, 1 to do" if run == 0 else "1 already scored, 0 to do") in out
    assert "model/authors" in out and "vocals" in out
  assert os.path.exists(tmp_path / "summary.csv")
