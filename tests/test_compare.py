"""resunet_jax.compare: tables, paired statistics, files, learning curves and the refusals.

The evaluation folders are written by the project's own code: per-track museval JSON files
(``evaluation.track_json``) with chosen per-window values whose medians are known, and the
summaries ``evaluation.write_summary`` makes of them; one test runs ``evaluation.evaluate`` itself.
"""
import json
import os

import numpy as np
import pytest

from resunet_jax import compare
from resunet_jax import evaluation

TRACKS = [f"Artist {i} - Song {i}" for i in range(7)]
A_VOCALS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
D_VOCALS = [0.5, -0.2, 1.0, 0.0, 0.3, 2.0, -1.0]  # run B - run A, per track
A_DRUMS = [3.5, 1.25, -2.0, 0.5, 4.0, 2.0, 1.0]
D_DRUMS = [-0.5, -0.25, 0.75, -1.0, -0.125, 0.5, -2.0]


def windows(median):
  """Per-window values with the given median over windows (NaN windows ignored)."""
  return [median - 1.5, np.nan, median, median + 0.25, np.nan, median + 3.0, median - 2.0]


def write_eval(eval_dir, values, method="model", protocol="authors", split="test"):
  """values: {track: {target: SDR median}}; SIR = SDR + 10, ISR = SDR + 3, SAR = SDR + 5."""
  offsets = {"SDR": 0.0, "SIR": 10.0, "ISR": 3.0, "SAR": 5.0}
  for name, by_target in values.items():
    scores = {t: {m: np.array(windows(v + offsets[m])) for m in evaluation.METRICS}
              for t, v in by_target.items()}
    path = evaluation.track_json_path(str(eval_dir), method, protocol, split, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(evaluation.track_json(name, scores))
  evaluation.write_summary(str(eval_dir), split, list(values), log=None)
  return str(eval_dir)


def run_values(vocals, drums=None, tracks=TRACKS):
  return {n: dict({"vocals": v}, **({"drums": drums[i]} if drums is not None else {}))
          for i, (n, v) in enumerate(zip(tracks, vocals))}


@pytest.fixture
def two_runs(tmp_path):
  a = write_eval(tmp_path / "a" / "eval" / "test", run_values(A_VOCALS, A_DRUMS))
  b = write_eval(tmp_path / "b" / "eval" / "test",
                 run_values(np.add(A_VOCALS, D_VOCALS), np.add(A_DRUMS, D_DRUMS)))
  return a, b


def test_table_numbers_are_the_medians_and_paired_differences(two_runs):
  a, b = two_runs
  c = compare.compare_runs([a, b], n_resamples=2000)
  assert c.labels == ["a", "b"] and c.split == "test" and c.tracks == sorted(TRACKS)
  assert c.targets == ["vocals", "drums"]  # musdb's order
  for t, first, diff in (("vocals", A_VOCALS, D_VOCALS), ("drums", A_DRUMS, D_DRUMS)):
    second = np.add(first, diff)
    for i, values in enumerate((first, second)):
      s = c.summary[t][i]
      assert s["tracks"] == 7
      assert s["SDR"] == pytest.approx(np.median(values), abs=1e-9)
      assert s["SIR"] == pytest.approx(np.median(values) + 10.0, abs=1e-9)
      assert s["SAR"] == pytest.approx(np.median(values) + 5.0, abs=1e-9)
      order = np.argsort(TRACKS)  # c.tracks is sorted
      np.testing.assert_allclose(c.per_track[t]["SDR"][i], np.asarray(values)[order], atol=1e-9)
    p = c.paired[t][1]
    assert c.paired[t][0] is None
    assert p["pairs"] == 7
    assert p["median_diff"] == pytest.approx(np.median(diff), abs=1e-9)
    assert (p["wins"], p["ties"], p["losses"]) == (sum(np.array(diff) > 0),
                                                   sum(np.array(diff) == 0),
                                                   sum(np.array(diff) < 0))
    assert p["ci_low"] <= p["median_diff"] <= p["ci_high"]
  # The median of the differences, not the difference of the medians (4 - 4 for vocals).
  assert c.paired["vocals"][1]["median_diff"] == pytest.approx(0.3)
  assert c.summary["vocals"][1]["SDR"] - c.summary["vocals"][0]["SDR"] == pytest.approx(0.0)
  assert (c.paired["vocals"][1]["wins"], c.paired["vocals"][1]["ties"],
          c.paired["vocals"][1]["losses"]) == (4, 1, 2)
  assert c.best["vocals"] == [2, 4]  # the tie counts for neither run
  # The same numbers as eval.py's summary.csv and as museval's own aggregation.
  import museval  # pylint: disable=g-import-not-at-top
  store = museval.EvalStore()
  store.add_eval_dir(os.path.join(b, "model", "authors"))
  agg = store.agg_frames_tracks_scores()
  for t in ("vocals", "drums"):
    for m in ("SDR", "SIR", "SAR"):
      assert c.summary[t][1][m] == pytest.approx(agg[(t, m)], abs=1e-9)
  text = c.format_table()
  assert "[1] a" in text and "[2] b" in text and "4/1/2" in text
  assert f"{np.median(D_VOCALS):+.3f}" in text and f"{np.median(A_VOCALS):.3f}" in text


def test_bootstrap_interval_is_seeded_and_contains_the_median():
  rng = np.random.default_rng(5)
  d = rng.normal(0.4, 1.0, 50)
  first = compare.bootstrap_median_ci(d, 10000, seed=3)
  assert first == compare.bootstrap_median_ci(d, 10000, seed=3)
  assert first[0] < np.median(d) < first[1]
  # Compared with a plain reimplementation: the seed's draws, the percentile interval.
  gen = np.random.default_rng(3)
  meds = np.median(d[gen.integers(0, 50, size=(10000, 50))], axis=1)
  np.testing.assert_allclose(first, np.percentile(meds, [2.5, 97.5]), rtol=0, atol=1e-12)
  wider = compare.bootstrap_median_ci(d, 10000, seed=3, confidence=0.99)
  assert wider[0] <= first[0] and wider[1] >= first[1]
  assert compare.bootstrap_median_ci(np.full(9, 0.7)) == (pytest.approx(0.7), pytest.approx(0.7))
  assert np.isnan(compare.bootstrap_median_ci([])[0])


def test_paired_stats_skip_nan_tracks_and_count_ties_within_the_tolerance():
  p = compare.paired_stats([1.0, 2.0, np.nan, 4.0, 5.0], [1.05, 1.0, 3.0, np.nan, 6.0],
                           n_resamples=100, tie_tolerance=0.1)
  assert p["pairs"] == 3 and (p["wins"], p["ties"], p["losses"]) == (1, 1, 1)
  assert p["median_diff"] == pytest.approx(0.05)
  assert compare.best_counts([[1.0, 2.0, 3.0, np.nan], [0.5, 2.0, 4.0, 9.0],
                              [0.0, 1.0, 3.5, 1.0]]) == [1, 1, 0]


def test_three_runs_and_labels(two_runs, tmp_path):
  a, b = two_runs
  c3 = write_eval(tmp_path / "c", run_values(np.add(A_VOCALS, 0.1)))  # vocals only
  c = compare.compare_runs([a, b, c3], labels=["base", "new", "other"], n_resamples=500)
  assert c.labels == ["base", "new", "other"]
  assert c.summary["drums"][2] is None and c.paired["drums"][2] is None
  assert c.paired["vocals"][2]["wins"] == 7 and c.paired["vocals"][2]["median_diff"] == (
      pytest.approx(0.1))
  assert any("'drums' is scored by base, new only" in w for w in c.warnings)
  text = c.format_table()
  assert "best" in text
  with pytest.raises(compare.CompareError, match="labels must differ"):
    compare.compare_runs([a, b], labels=["x", "x"])


def test_csv_and_png_files(two_runs, tmp_path):
  a, b = two_runs
  c = compare.compare_runs([a, b], n_resamples=500, seed=1)
  out = tmp_path / "out"
  written = compare.write_outputs(c, str(out))
  names = sorted(os.path.basename(w) for w in written)
  assert names == ["comparison.json", "per_track_sdr.png", "summary.csv", "table.txt",
                   "tracks.csv"]
  import csv  # pylint: disable=g-import-not-at-top
  with open(out / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["target"], r["label"]) for r in rows] == [("vocals", "a"), ("vocals", "b"),
                                                       ("drums", "a"), ("drums", "b")]
  assert float(rows[1]["sdr_median_diff"]) == pytest.approx(np.median(D_VOCALS), abs=1e-5)
  assert float(rows[1]["SDR"]) == pytest.approx(np.median(np.add(A_VOCALS, D_VOCALS)), abs=1e-5)
  assert rows[0]["sdr_median_diff"] == "" and rows[1]["wins"] == "4"
  with open(out / "tracks.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 7 * 2
  diffs = {r["track"]: float(r["sdr_minus_first"]) for r in rows
           if r["target"] == "vocals" and r["label"] == "b"}
  assert diffs == {n: pytest.approx(d, abs=1e-5) for n, d in zip(TRACKS, D_VOCALS)}
  with open(out / "comparison.json") as f:
    data = json.load(f)
  assert data["paired_sdr_vs_first"]["vocals"]["b"]["pairs"] == 7
  with open(out / "per_track_sdr.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(str(out / "per_track_sdr.png"))
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  # Nothing is overwritten without force; with it, the files are replaced.
  with pytest.raises(compare.CompareError, match="already holds.*--force"):
    compare.write_outputs(c, str(out))
  (out / "learning_curves.png").write_bytes(b"stale")
  compare.write_outputs(c, str(out), force=True, plot=False)
  assert not (out / "learning_curves.png").exists()  # an earlier comparison's output
  assert (out / "per_track_sdr.png").exists() is False
  assert sorted(os.listdir(out)) == ["comparison.json", "summary.csv", "table.txt", "tracks.csv"]


def make_workdir(root, steps, vocals_by_step, scalars):
  """A training work directory: checkpoints/, eval/step_<n>/test, clu event files."""
  os.makedirs(root / "checkpoints")
  for s in steps:
    write_eval(root / "eval" / f"step_{s}" / "test", run_values(vocals_by_step[s]))
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(str(root), asynchronous=False)
  for step, values in scalars:
    writer.write_scalars(step, values)
  writer.write_hparams({"lr": 0.001})
  writer.close()
  return str(root)


@pytest.fixture
def workdirs(tmp_path):
  w1 = make_workdir(tmp_path / "run1", [10, 20], {10: A_VOCALS, 20: np.add(A_VOCALS, 1.0)},
                    [(s, {"train/loss": 1.0 / s, "val/sdr": 0.1 * s}) for s in (5, 10, 15, 20)])
  w2 = make_workdir(tmp_path / "run2", [30], {30: np.add(A_VOCALS, D_VOCALS)},
                    [(s, {"train/loss": 2.0 / s, "val/sdr": 0.2 * s, "val/sdr_vocals": 0.2 * s})
                     for s in (10, 20, 30)])
  return w1, w2


def test_work_directories_newest_step_and_learning_curves(workdirs, tmp_path):
  w1, w2 = workdirs
  c = compare.compare_runs([w1, w2], n_resamples=500)
  assert [r.step for r in c.runs] == [20, 30] and c.labels == ["run1", "run2"]
  assert "newest evaluated of 2" in c.runs[0].step_note
  assert c.summary["vocals"][0]["SDR"] == pytest.approx(np.median(A_VOCALS) + 1.0)
  steps, values = c.curves[0]["train/loss"]
  assert list(steps) == [5, 10, 15, 20]
  np.testing.assert_allclose(values, [1 / 5, 1 / 10, 1 / 15, 1 / 20], rtol=1e-6)
  assert list(c.curves[1]["val/sdr_vocals"][0]) == [10, 20, 30]
  assert not any(t.startswith("_hparams_") for t in c.curves[0])
  c10 = compare.compare_runs([w1, w2], step=None, n_resamples=10)
  assert c10.runs[0].step == 20
  c10 = compare.compare_runs([os.path.join(w1, "eval", "step_10", "test"), w2], n_resamples=10)
  assert c10.runs[0].step == 10 and c10.runs[0].workdir == w1 and c10.curves[0]
  assert c10.summary["vocals"][0]["SDR"] == pytest.approx(np.median(A_VOCALS))
  with pytest.raises(compare.CompareError, match=r"no evaluation of step 10 \(evaluated steps: 30"):
    compare.compare_runs([w1, w2], step=10)
  out = tmp_path / "out"
  written = compare.write_outputs(c, str(out))
  assert {"curves.csv", "learning_curves.png"} <= {os.path.basename(w) for w in written}
  with open(out / "learning_curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(out / "curves.csv") as f:
    lines = f.read().splitlines()
  assert lines[0] == "run,label,tag,step,value" and "1,run1,train/loss,5,0.2" in lines
  assert "2,run2,val/sdr_vocals,30,6.0" in lines


def test_evaluation_folders_named_freely_are_found_by_their_contents(tmp_path):
  # eval.py --eval_dir=<workdir>/eval/step_<n>/<any name>: the split is the one scored inside.
  w1 = tmp_path / "run1"
  os.makedirs(w1 / "checkpoints")
  write_eval(w1 / "eval" / "step_5" / "first20", run_values(A_VOCALS))
  c = compare.compare_runs([str(w1), str(w1)], n_resamples=10)
  assert c.split == "test" and c.runs[0].eval_dir.endswith(os.path.join("step_5", "first20"))
  assert compare.compare_runs([str(w1), str(w1)], split="test", n_resamples=10).runs[0].step == 5
  with pytest.raises(compare.CompareError, match="no evaluation of split 'train'"):
    compare.compare_runs([str(w1), str(w1)], split="train")
  write_eval(w1 / "eval" / "step_5" / "other", run_values(A_VOCALS))
  with pytest.raises(compare.CompareError, match="several evaluations .*first20, other"):
    compare.compare_runs([str(w1), str(w1)])


def test_tf1_simple_values_are_read(tmp_path):
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
  writer = event_file_writer.EventFileWriter(str(tmp_path))
  for step in (1, 2):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="train/loss",
                                                                   simple_value=3.0 * step)])
    writer.add_event(event_pb2.Event(step=step, wall_time=float(step), summary=summary))
  writer.close()
  curves = compare.read_scalars(str(tmp_path))
  assert list(curves["train/loss"][0]) == [1, 2]
  np.testing.assert_allclose(curves["train/loss"][1], [3.0, 6.0])


def test_refusals_name_the_runs(two_runs, tmp_path):
  a, b = two_runs
  with pytest.raises(compare.CompareError, match="at least two runs; got 1"):
    compare.compare_runs([a])
  # Different track sets: listed; --common_tracks compares the intersection.
  c_dir = write_eval(tmp_path / "c", run_values(A_VOCALS[:5], tracks=TRACKS[:5]))
  with pytest.raises(compare.CompareError) as e:
    compare.compare_runs([a, c_dir])
  msg = str(e.value)
  assert "different track sets" in msg and "--common_tracks" in msg and a in msg
  assert TRACKS[5] in msg and TRACKS[6] in msg
  c = compare.compare_runs([a, c_dir], common_tracks=True, n_resamples=100)
  assert c.tracks == sorted(TRACKS[:5]) and c.dropped["a"] == sorted(TRACKS[5:])
  assert c.summary["vocals"][0]["SDR"] == pytest.approx(np.median(A_VOCALS[:5]))
  assert "2 track score(s) dropped" in c.format_table()
  # A different split.
  d_dir = write_eval(tmp_path / "d", run_values(A_VOCALS), split="train")
  with pytest.raises(compare.CompareError, match="different splits.*test.*train"):
    compare.compare_runs([a, d_dir])
  with pytest.raises(compare.CompareError, match="no evaluation of split 'train'"):
    compare.compare_runs([a, d_dir], split="train")
  # A protocol a run lacks.
  e_dir = write_eval(tmp_path / "e", run_values(A_VOCALS), protocol="sisec_joint")
  with pytest.raises(compare.CompareError, match="no 'authors' results.*it has: sisec_joint"):
    compare.compare_runs([a, e_dir])
  # A method a run lacks; --method picks another.
  f_dir = write_eval(tmp_path / "f", run_values(A_VOCALS), method="oracle_irm")
  with pytest.raises(compare.CompareError, match="no results of method 'model'.*oracle_irm"):
    compare.compare_runs([a, f_dir])
  g_dir = write_eval(tmp_path / "g", run_values(np.add(A_VOCALS, 3)), method="oracle_irm")
  c = compare.compare_runs([f_dir, g_dir], method="oracle_irm", n_resamples=100)
  assert c.paired["vocals"][1]["median_diff"] == pytest.approx(3.0)
  # Paths that are no run.
  (tmp_path / "empty").mkdir()
  with pytest.raises(compare.CompareError, match="empty: neither an evaluation folder"):
    compare.compare_runs([a, str(tmp_path / "empty")])
  with pytest.raises(compare.CompareError, match="nowhere: no such directory"):
    compare.compare_runs([a, str(tmp_path / "nowhere")])
  (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
  with pytest.raises(compare.CompareError, match="work directory without evaluations"):
    compare.compare_runs([a, str(tmp_path / "fresh")])


def test_command_line(two_runs, tmp_path, capsys):
  a, b = two_runs
  out = tmp_path / "cli"
  assert compare.main([a, b, "--out", str(out), "--bootstrap", "300", "--labels", "A,B"]) == 0
  printed = capsys.readouterr().out
  assert "vocals" in printed and "[2] B" in printed and "wrote 5 files" in printed
  assert (out / "per_track_sdr.png").exists() and (out / "summary.csv").exists()
  assert compare.main([a, b, "--out", str(out)]) == 2  # no overwrite
  err = capsys.readouterr().err
  assert "already holds" in err and "--force" in err
  assert compare.main([a, b, "--out", str(out), "--force", "--no_plot"]) == 0
  assert compare.main([a, "--out", str(tmp_path / "x")]) == 2
  assert "at least two runs" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main(["--help"])
  assert "NEWEST evaluated step" in capsys.readouterr().out


def test_outputs_of_evaluate_itself(tmp_path):
  """Two stand-in separators scored by evaluation.evaluate on tiny synthetic tracks."""
  from resunet_jax import separate  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  tracks = []
  for k in range(3):
    n = 44100  # 1 s: one window
    vocals = (0.2 * rng.standard_normal((n, 2))).astype(np.float32)
    accomp = (0.2 * rng.standard_normal((n, 2))).astype(np.float32)
    tracks.append({"name": f"track {k}", "mixture": vocals + accomp, "sample_rate": 44100,
                   "stems": {"vocals": vocals, "accompaniment": accomp}})

  def gain_separator(gain):
    fn = lambda x: np.float32(gain) * x[:, None]
    return separate.SongSeparator(fn, ["vocals"], separate.make_plan("crossfade", 1.0, 0.25))

  dirs = []
  for gain in (0.3, 0.5):
    d = str(tmp_path / f"gain{gain}")
    evaluation.evaluate(evaluation.InMemoryTracks(tracks), d, separator=gain_separator(gain),
                        workers=0, progress=False, log=None)
    dirs.append(d)
  c = compare.compare_runs(dirs, n_resamples=1000)
  with open(os.path.join(dirs[1], "summary.json")) as f:
    summary = json.load(f)
  expected = summary["model"]["authors"]["vocals"]["SDR"]
  assert c.summary["vocals"][1]["SDR"] == pytest.approx(expected)
  # Gain 0.5 is the better estimate of an equal-power stem on every track.
  assert c.paired["vocals"][1]["wins"] == 3 and c.paired["vocals"][1]["median_diff"] > 0


def test_runs_on_different_data_are_flagged(two_runs):
  a, b = two_runs
  for path, variant in ((a, "stem"), (b, "hq")):
    with open(os.path.join(path, "settings.json"), "w") as f:
      json.dump({"common": {"tracks": {"dataset": "musdb18", "variant": variant, "split": "test"},
                            "window_seconds": 1.0}, "methods": {}}, f)
  c = compare.compare_runs([a, b], n_resamples=10)
  assert any("different data" in w and "'hq'" in w for w in c.warnings)
  assert "note: the runs were evaluated on different data" in c.format_table()
