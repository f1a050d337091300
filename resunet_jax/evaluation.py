"""Evaluation with museval (BSS Eval v4, 1 s windows) by the SiSEC 2018 protocol, resumable and parallel.

Scores. For every track, museval computes SDR/SIR/ISR/SAR on 1 s windows (win = hop = 44 100
samples, mode "v4": time-invariant 512-tap distortion filters, ``padding=True``). A track's score
for a target is the median over its windows, NaN windows ignored (museval makes a window NaN when
a reference or an estimate in the evaluated set is silent there); a target's score is the median
over tracks (NaN tracks ignored). This is the SiSEC 2018 aggregation and the paper's.

Protocols (which estimates museval sees together):

* ``"authors"``: each target is scored alone, ``museval.evaluate([reference], [estimate])``, as
  bytesep's evaluation callback does (REFERENCE §7.1). Only the target's own silent windows are
  NaN.
* ``"sisec_joint"``: what ``museval.eval_mus_track`` does for SiSEC 2018 submissions: the targets
  among drums, bass, other, vocals are scored together (at least two of them), and when both
  vocals and accompaniment are estimated they are scored as a pair, the vocals score then coming
  from the pair. A window is NaN for all sources of a group when any of them is silent in it, and
  SIR/ISR/SAR depend on the other references, so the numbers differ from "authors" (the per-window
  SDR itself does not: in v4 it is 10 log10(sum s^2 / sum (s_hat - s)^2), REFERENCE §13). A
  vocals-only model needs ``residual=True`` (accompaniment = mixture - vocals) for this protocol.

Methods: "model" (a separator) and the oracles ``oracle_<kind>``, ideal masks computed from the true
stems and applied to the mixture's STFT (n_fft 2048, hop 441, the paper model's front end,
``resunet_jax.spectral``) then inverted, as upper bounds:

* ``irm``: M = min(|S| / |X|, 1), mixture phase (the bounded ideal ratio mask);
* ``irm_unbounded``: M = |S| / |X|, mixture phase (|Y| = |S|; needs M > 1 where the paper counts
  about 22 % of bins);
* ``cirm_bounded``: magnitude min(|S|, |X|) with the true phase: the best a magnitude mask <= 1
  with a free phase (the paper's "Decouple" mask) can do;
* ``cirm``: M = S / X (magnitude ratio and phase difference, unbounded), Y = M X = S: the decoupled
  complex ideal ratio mask; it recovers the stem up to the STFT round trip.

The fraction of bins with |S| > |X| (IRM > 1) is recorded per track and target for the oracles.

Files under ``eval_dir``:

  settings.json                                 what is evaluated (a rerun must match it)
  <method>/<protocol>/<split>/<track>.json      museval's per-track format (TrackStore)
  <method>/<protocol>/tracks.csv                per track and target: medians over windows
  <method>/estimates/<track>/<target>.wav       with save_estimates (float wav)
  oracle_stats/<split>/<track>.json             IRM > 1 fractions (oracle runs)
  summary.csv, summary.json                     per method, protocol, target: medians over tracks

``museval.EvalStore().add_eval_dir(eval_dir + "/model/sisec_joint")`` reads the test split's
per-track files back. A rerun skips every (track, method, protocol) whose JSON exists; each file is
written atomically, so an interrupted run resumes where it stopped. Tracks are scored by worker
processes while the main process separates the next track.
"""
import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os
import warnings
from typing import Dict, Iterable, Iterator, List, Sequence

import numpy as np

from resunet_jax import fileutil

PROTOCOLS = ("authors", "sisec_joint")
ORACLES = ("irm", "irm_unbounded", "cirm_bounded", "cirm")
METRICS = ("SDR", "SIR", "ISR", "SAR")
MUSDB_TARGETS = ("vocals", "drums", "bass", "other", "accompaniment")  # musdb's order
FOUR_STEMS = ("drums", "bass", "other", "vocals")
WINDOW = HOP = 44100  # 1 s at 44.1 kHz
ORACLE_N_FFT, ORACLE_HOP = 2048, 441


# ------------------------------------------------------------------------------------------------
# Scoring one track.


def _museval(references, estimates):
  import museval  # pylint: disable=g-import-not-at-top
  sdr, isr, sir, sar = museval.evaluate(references, estimates, win=WINDOW, hop=HOP, mode="v4",
                                        padding=True)
  return [{"SDR": sdr[i], "SIR": sir[i], "ISR": isr[i], "SAR": sar[i]}
          for i in range(len(references))]


def joint_groups(targets: Sequence[str]) -> List[List[str]]:
  """The sets that ``museval.eval_mus_track`` scores together, in its order."""
  targets = [t for t in MUSDB_TARGETS if t in targets]
  has_pair = "vocals" in targets and "accompaniment" in targets
  stems = [t for t in targets if t != "accompaniment"]
  groups = [stems] if len(stems) >= 2 else []
  if has_pair:
    groups.append(["vocals", "accompaniment"])
  return groups


def check_protocol(protocol, targets):
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  unknown = sorted(set(targets) - set(MUSDB_TARGETS))
  if unknown:
    raise ValueError(f"targets {unknown} are not MUSDB18 sources {MUSDB_TARGETS}")
  if protocol == "sisec_joint":
    scored = {t for g in joint_groups(targets) for t in g}
    if scored != set(targets):
      raise ValueError(
          f"protocol 'sisec_joint' scores at least two of {FOUR_STEMS} together, or vocals with "
          f"accompaniment; with targets {sorted(targets)} it cannot score {sorted(set(targets) - scored)}"
          " (for a vocals model add the residual accompaniment: residual=True / --residual)")


def score_track(references: Dict[str, np.ndarray], estimates: Dict[str, np.ndarray], protocol
                ) -> Dict[str, Dict[str, np.ndarray]]:
  """{target: {metric: per-window values}} for the estimated targets; arrays (L, C)."""
  check_protocol(protocol, list(estimates))
  scores = {}
  if protocol == "authors":
    for t in [t for t in MUSDB_TARGETS if t in estimates]:
      scores[t] = _museval([references[t]], [estimates[t]])[0]
    return scores
  for group in joint_groups(list(estimates)):
    results = _museval([references[t] for t in group], [estimates[t] for t in group])
    for t, r in zip(group, results):
      scores[t] = r  # the (vocals, accompaniment) pair comes last and wins for vocals
  return {t: scores[t] for t in MUSDB_TARGETS if t in scores}


def track_json(name, scores) -> str:
  """museval's per-track JSON (TrackStore: values quantised to 1e-5, inf -> NaN)."""
  import museval  # pylint: disable=g-import-not-at-top
  store = museval.TrackStore(track_name=name, win=WINDOW / 44100, hop=HOP / 44100)
  for target, values in scores.items():
    store.add_target(target_name=target, values={m: np.asarray(values[m]).tolist()
                                                 for m in METRICS})
  store.validate()
  return store.json


def _atomic_write(path, text):
  with fileutil.atomic_text_file(path) as f:
    f.write(text)


def _score_and_write(name, references, estimates, jobs):
  """Worker task: jobs = [(protocol, json path)]. Returns {protocol: {target: median SDR}}."""
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN medians
    for protocol, path in jobs:
      scores = score_track(references, estimates, protocol)
      _atomic_write(path, track_json(name, scores))
      out[protocol] = {t: float(np.nanmedian(v["SDR"])) for t, v in scores.items()}
  return name, out


# ------------------------------------------------------------------------------------------------
# Oracle masks.


def oracle_estimates(mixture, stems, targets, kind, n_fft=ORACLE_N_FFT, hop=ORACLE_HOP):
  """({target: (L, C) float32}, {target: fraction of bins with |S| > |X|}) for one ideal mask."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
  if kind not in ORACLES:
    raise ValueError(f"unknown oracle {kind!r}; expected one of {ORACLES}")
  length, channels = mixture.shape
  tiny = 1e-12
  estimates, above_one = {}, {}
  for t in targets:
    out = np.empty((length, channels), np.float32)
    above = 0
    for c in range(channels):  # one channel at a time: full-track spectrograms are large
      x = spectral.stft(jnp.asarray(mixture[:, c], jnp.float32), n_fft, hop)  # (T, F)
      s = spectral.stft(jnp.asarray(stems[t][:, c], jnp.float32), n_fft, hop)
      mag_x, mag_s = jnp.abs(x), jnp.abs(s)
      above += int(jnp.sum(mag_s > mag_x))
      x_phase = x / jnp.maximum(mag_x, tiny)  # unit phasor (0 where |X| = 0)
      if kind == "irm":
        y = jnp.clip(mag_s / jnp.maximum(mag_x, tiny), 0.0, 1.0) * x
      elif kind == "irm_unbounded":
        y = mag_s * x_phase
      elif kind == "cirm_bounded":
        y = jnp.minimum(mag_s, mag_x) * (s / jnp.maximum(mag_s, tiny))
      else:  # cirm: M = S / X = S conj(X) / |X|^2, applied to X
        y = (s * jnp.conj(x) / jnp.maximum(mag_x * mag_x, tiny * tiny)) * x
      out[:, c] = np.asarray(spectral.istft(y, n_fft, hop, length))
      del x, s, y
    estimates[t] = out
    frames = spectral.num_frames(length, hop)
    above_one[t] = above / float(channels * frames * (n_fft // 2 + 1))
  return estimates, above_one


# ------------------------------------------------------------------------------------------------
# Track sources.


class MusdbTracks:
  """Whole tracks of a MUSDB18 split through the data pipeline (``resunet_jax.data.pipeline``)."""

  def __init__(self, data_config, split=None, num_tracks=None, track_names=None):
    if data_config.get("name", "musdb18") != "musdb18":
      raise ValueError(f"evaluation reads MUSDB18 tracks; data.name is {data_config.name!r}")
    self.config = data_config
    self.split = split or data_config.eval_split
    self.num_tracks = num_tracks
    self.track_names = list(track_names) if track_names else None

  def names(self) -> List[str]:
    from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    order = [n for n, _, _ in pipeline.split_track_order(pipeline.prepare(self.config),
                                                          self.split)]
    if self.track_names is not None:
      unknown = [n for n in self.track_names if n not in order]
      if unknown:
        raise KeyError(f"tracks {unknown} are not in split {self.split!r}")
      order = list(self.track_names)
    return order[:self.num_tracks] if self.num_tracks is not None else order

  def tracks(self, names) -> Iterator[dict]:
    from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    if not names:
      return iter(())
    return pipeline.eval_tracks(self.config, self.split, track_names=list(names))

  def describe(self):
    from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    variant, manual_dir, _ = pipeline.resolve_dirs(self.config)
    return {"dataset": "musdb18", "variant": variant, "manual_dir": manual_dir,
            "split": self.split}


class InMemoryTracks:
  """Tracks given as dicts (the ``pipeline.eval_tracks`` format); for tests and notebooks."""

  def __init__(self, tracks: Iterable[dict], split="test"):
    self._tracks = {t["name"]: t for t in tracks}
    self.split = split

  def names(self):
    return list(self._tracks)

  def tracks(self, names):
    return (self._tracks[n] for n in names)

  def describe(self):
    return {"dataset": "in_memory", "split": self.split, "tracks": self.names()}


# ------------------------------------------------------------------------------------------------
# Aggregation.


def _safe_name(name):
  return name.replace(os.sep, "_")


def track_json_path(eval_dir, method, protocol, split, name):
  return os.path.join(eval_dir, method, protocol, split, _safe_name(name) + ".json")


def read_track_medians(path) -> Dict[str, Dict[str, float]]:
  """{target: {metric: median over windows (NaN ignored)}} from a museval per-track JSON."""
  with open(path) as f:
    data = json.load(f)  # museval writes NaN as the bare token NaN, which json reads
  out = {}
  for target in data["targets"]:
    out[target["name"]] = {}
    for m in METRICS:
      values = np.array([np.nan if f["metrics"][m] is None else float(f["metrics"][m])
                         for f in target["frames"]], np.float64)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out[target["name"]][m] = float(np.nanmedian(values)) if len(values) else float("nan")
  return out


def aggregate(eval_dir, method, protocol, split, names) -> dict:
  """Per track medians and per target medians over tracks (of the tracks scored so far)."""
  per_track = {}
  for name in names:
    path = track_json_path(eval_dir, method, protocol, split, name)
    if os.path.exists(path):
      per_track[name] = read_track_medians(path)
  targets = [t for t in MUSDB_TARGETS if any(t in v for v in per_track.values())]
  summary = {}
  for t in targets:
    summary[t] = {"tracks": sum(t in v for v in per_track.values())}
    for m in METRICS:
      values = np.array([v[t][m] for v in per_track.values() if t in v])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary[t][m] = float(np.nanmedian(values))
  return {"tracks": per_track, "targets": summary}


def _write_csv(path, header, rows):
  with fileutil.atomic_text_file(path, newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def format_table(summary) -> str:
  """SDR medians: one row per target, one column per (method, protocol)."""
  columns = [(m, p) for m in summary for p in summary[m]]
  targets = [t for t in MUSDB_TARGETS if any(t in summary[m][p]["targets"] for m, p in columns)]
  head = ["target"] + [f"{m}/{p}" for m, p in columns]
  rows = []
  for t in targets:
    row = [t]
    for m, p in columns:
      s = summary[m][p]["targets"].get(t)
      row.append(f"{s['SDR']:.3f} ({s['tracks']})" if s else "-")
    rows.append(row)
  four = [t for t in FOUR_STEMS if t in targets]
  if len(four) == 4:
    row = ["mean of 4"]
    for m, p in columns:
      vals = [summary[m][p]["targets"].get(t, {}).get("SDR", np.nan) for t in four]
      row.append(f"{np.mean(vals):.3f}")
    rows.append(row)
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
  title = "median SDR in dB (tracks): median over 1 s windows per track, median over tracks"
  return "\n".join([title] + lines)


# ------------------------------------------------------------------------------------------------
# The evaluation loop.


def variables_fingerprint(variables) -> str:
  """sha1 over all leaves (paths, shapes, bytes): tells two checkpoints apart."""
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha1()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.shape, a.dtype)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _check_settings(eval_dir, common, per_method):
  """Records what eval_dir holds; a rerun must agree on the tracks and on each method it shares.

  ``common``: settings of the whole directory (data, windows); ``per_method``: {method: settings}.
  New methods are added to the record.
  """
  path = os.path.join(eval_dir, "settings.json")
  normal = lambda x: json.loads(json.dumps(x))  # tuples -> lists, as read back
  common, per_method = normal(common), normal(per_method)
  record = {"common": common, "methods": {}}
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    problems = [] if record["common"] == common else [("settings", record["common"], common)]
    problems += [(m, record["methods"][m], v) for m, v in per_method.items()
                 if m in record["methods"] and record["methods"][m] != v]
    if problems:
      details = "; ".join(f"{what}: {old!r} then, {new!r} now" for what, old, new in problems)
      raise ValueError(f"{eval_dir} holds results of a different evaluation ({details}); use "
                       "another eval_dir (or delete it) to start over")
  if any(m not in record["methods"] for m in per_method) or not os.path.exists(path):
    record["methods"].update(per_method)
    _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _save_estimates(eval_dir, method, name, estimates):
  from resunet_jax import audio  # pylint: disable=g-import-not-at-top
  folder = os.path.join(eval_dir, method, "estimates", _safe_name(name))
  os.makedirs(folder, exist_ok=True)
  for t, y in estimates.items():
    with audio.AtomicAudioWriter(os.path.join(folder, t + ".wav"), 44100, y.shape[1],
                                 subtype="FLOAT", overwrite=True) as w:
      w.write(y)
      w.commit()


def evaluate(tracks, eval_dir, *, separator=None, oracles=(), oracle_targets=MUSDB_TARGETS,
             protocols=("authors",), residual=False, workers=None, settings=None,
             save_estimates=False, progress=True, log=print) -> dict:
  """Scores a separator and/or oracle masks on ``tracks``; returns the summary (also written).

  Args:
    tracks: a track source (:class:`MusdbTracks`, :class:`InMemoryTracks`).
    eval_dir: output folder (see the module docstring); reruns resume in it.
    separator: a ``separate.SongSeparator`` (method "model"), or None.
    oracles: oracle kinds to score (methods "oracle_<kind>") on ``oracle_targets``.
    protocols: any of PROTOCOLS.
    residual: also score mixture - sum of the model's estimates under its residual name (e.g.
      accompaniment for a vocals model).
    workers: scoring processes (default: CPU count); 0 scores in this process.
    settings: {method: JSON-able description} of what is evaluated (checkpoint, chunking); a
      rerun in the same eval_dir must agree with what it holds for the same method (protocols,
      workers and progress may change; new methods are added).
  """
  eval_dir = os.path.abspath(eval_dir)
  protocols = list(protocols)
  methods = {}
  if separator is not None:
    methods["model"] = separator.output_names(residual)
  for kind in oracles:
    if kind not in ORACLES:
      raise ValueError(f"unknown oracle {kind!r}; expected one of {ORACLES}")
    methods["oracle_" + kind] = list(oracle_targets)
  if not methods:
    raise ValueError("nothing to evaluate: give a separator and/or oracles")
  for targets in methods.values():
    for p in protocols:
      check_protocol(p, targets)
  split = tracks.split
  settings = settings or {}
  _check_settings(eval_dir, {"tracks": tracks.describe(), "window_seconds": WINDOW / 44100},
                  {m: dict(settings.get(m, {}), targets=t) for m, t in methods.items()})
  names = tracks.names()
  if not names:
    raise ValueError(f"split {split!r} has no tracks")

  todo = {}  # {track: {method: [(protocol, json path)]}}: what is not scored yet
  for n in names:
    for m in methods:
      for p in protocols:
        path = track_json_path(eval_dir, m, p, split, n)
        if not os.path.exists(path):
          todo.setdefault(n, {}).setdefault(m, []).append((p, path))
  pending_names = [n for n in names if n in todo]
  if log:
    log(f"evaluating {len(names)} track(s) of split {split!r} into {eval_dir}: "
        f"{len(names) - len(pending_names)} already scored, {len(pending_names)} to do")

  workers = os.cpu_count() if workers is None else int(workers)
  executor = None
  if workers > 0 and pending_names:
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  futures = set()
  bar = None
  if progress and pending_names:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=sum(len(todo[n]) for n in pending_names), desc="scoring",
                    unit="track")
  stats_dir = os.path.join(eval_dir, "oracle_stats", split)

  def finished(result):
    name, by_protocol = result
    if bar is not None:
      first = next(iter(by_protocol.values()), {})
      bar.set_postfix_str(f"{name[:30]}: " + " ".join(f"{t} {v:.2f}" for t, v in first.items()))
      bar.update(1)

  def drain(limit):
    while len(futures) > limit:
      done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
      for f in done:
        futures.remove(f)
        finished(f.result())

  try:
    for track in tracks.tracks(pending_names):
      name = track["name"]
      mixture = np.asarray(track["mixture"], np.float32)
      for method, jobs in todo[name].items():
        if method == "model":
          estimates = separator.separate(mixture, residual=residual, name=name)
        else:
          estimates, above_one = oracle_estimates(mixture, track["stems"], methods[method],
                                                  method[len("oracle_"):])
          stats_path = os.path.join(stats_dir, _safe_name(name) + ".json")
          if not os.path.exists(stats_path):
            _atomic_write(stats_path, json.dumps({"irm_above_one": above_one}, indent=2) + "\n")
        if save_estimates:
          _save_estimates(eval_dir, method, name, estimates)
        references = {t: track["stems"][t] for t in estimates}
        if executor is None:
          finished(_score_and_write(name, references, estimates, jobs))
        else:
          drain(workers - 1)  # at most `workers` tracks wait in memory
          futures.add(executor.submit(_score_and_write, name, references, estimates, jobs))
    drain(0)
  finally:
    if executor is not None:
      executor.shutdown(wait=True, cancel_futures=True)
    if bar is not None:
      bar.close()

  missing = [n for n in names if any(not os.path.exists(track_json_path(eval_dir, m, p, split, n))
                                     for m in methods for p in protocols)]
  if missing:
    raise RuntimeError(f"tracks {missing} were not scored (not delivered by the track source)")
  return write_summary(eval_dir, split, names, log=log)


def scored_methods(eval_dir, split):
  """{method: [protocols]} with per-track files for ``split`` in eval_dir (this run's or earlier)."""
  found = {}
  for method in sorted(os.listdir(eval_dir)):
    if method != "model" and not method.startswith("oracle_"):
      continue
    protocols = [p for p in PROTOCOLS if os.path.isdir(os.path.join(eval_dir, method, p, split))]
    if protocols:
      found[method] = protocols
  return found


def write_summary(eval_dir, split, names, log=print) -> dict:
  """Summaries (CSV, JSON, printed table) of every method and protocol scored in eval_dir."""
  summary, rows = {}, []
  methods = scored_methods(eval_dir, split)
  for method, protocols in methods.items():
    summary[method] = {}
    for protocol in protocols:
      agg = aggregate(eval_dir, method, protocol, split, names)
      summary[method][protocol] = agg
      _write_csv(os.path.join(eval_dir, method, protocol, "tracks.csv"),
                 ["track", "target"] + list(METRICS),
                 [[n, t] + [f"{v[m]:.5f}" for m in METRICS]
                  for n, by_t in agg["tracks"].items() for t, v in by_t.items()])
      for t, v in agg["targets"].items():
        rows.append([method, protocol, t, v["tracks"]] + [f"{v[m]:.5f}" for m in METRICS])
  _write_csv(os.path.join(eval_dir, "summary.csv"),
             ["method", "protocol", "target", "tracks"] + list(METRICS), rows)
  out = {m: {p: summary[m][p]["targets"] for p in summary[m]} for m in summary}
  stats_dir = os.path.join(eval_dir, "oracle_stats", split)
  if any(m.startswith("oracle_") for m in methods) and os.path.isdir(stats_dir):
    fractions = {}
    for n in names:
      path = os.path.join(stats_dir, _safe_name(n) + ".json")
      if os.path.exists(path):
        with open(path) as f:
          for t, v in json.load(f)["irm_above_one"].items():
            fractions.setdefault(t, []).append(v)
    out["irm_above_one_mean_over_tracks"] = {t: float(np.mean(v)) for t, v in fractions.items()}
  _atomic_write(os.path.join(eval_dir, "summary.json"),
                json.dumps(out, indent=2, sort_keys=True, allow_nan=True) + "\n")
  if log:
    log(format_table(summary))
    if "irm_above_one_mean_over_tracks" in out:
      log("fraction of STFT bins (2048/441) with |S| > |X| (IRM > 1), mean over tracks: " +
          ", ".join(f"{t} {v:.3f}" for t, v in out["irm_above_one_mean_over_tracks"].items()))
  return out


def evaluate_checkpoint(checkpoint_path=None, data_config=None, *, eval_dir=None, split=None,
                        num_tracks=None, track_names=None, protocols=("authors",), oracles=(),
                        oracle_targets=MUSDB_TARGETS, residual=False, scheme="authors",
                        chunk_seconds=30.0, overlap_seconds=10.0, batch_size=1, workers=None,
                        save_estimates=False, conv_backend="xla", progress=True,
                        log=print) -> dict:
  """``eval.py``'s work: a model directory or training workdir (and/or oracles) on a MUSDB18 split.

  ``data_config``: the data config (``config.data`` of a training config); None = the default
  one (the built-in data unless manual_dir is set). The default chunking is the authors' (30 s
  chunks, 15 s hop), as in their evaluation. eval_dir defaults to <checkpoint>/eval/<split>
  (<workdir>/eval/step_<n>/<split> for a training work directory). ``conv_backend`` picks the
  model's convolution backend (``resunet_jax.backends``; results are the same up to rounding).
  """
  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from resunet_jax import separate  # pylint: disable=g-import-not-at-top
  if data_config is None:
    from resunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    data_config = pipeline.default_data_config()
  tracks = MusdbTracks(data_config, split, num_tracks=num_tracks, track_names=track_names)
  settings, separator = {}, None
  if checkpoint_path:
    checkpoint_path = os.path.abspath(os.path.expanduser(checkpoint_path))
    model, variables, desc = checkpoint.load_model(checkpoint_path, conv_backend=conv_backend)
    separator = separate.SongSeparator.from_model(
        model, variables, desc["sources"], scheme=scheme, chunk_seconds=chunk_seconds,
        overlap_seconds=overlap_seconds, batch_size=batch_size)
    plan = separator.plan
    settings["model"] = {"checkpoint": checkpoint_path, "arch": desc.get("arch"),
                         "sources": list(desc["sources"]), "residual": bool(residual),
                         "variables_sha1": variables_fingerprint(variables),
                         "chunking": {"scheme": plan.scheme, "chunk": plan.chunk, "hop": plan.hop,
                                      "batch_size": batch_size}}
    if eval_dir is None:
      step = (desc.get("metadata") or {}).get("step")  # set for training work directories
      eval_dir = os.path.join(checkpoint_path, "eval",
                              *([f"step_{step}"] if step is not None else []), tracks.split)
  elif not oracles:
    raise ValueError("give a checkpoint (model directory or training workdir) and/or oracles")
  if eval_dir is None:
    raise ValueError("an oracle-only evaluation needs an eval_dir")
  for kind in oracles:
    settings["oracle_" + kind] = {"n_fft": ORACLE_N_FFT, "hop": ORACLE_HOP}
  return evaluate(tracks, eval_dir, separator=separator, oracles=oracles,
                  oracle_targets=oracle_targets, protocols=protocols, residual=residual,
                  workers=workers, settings=settings, save_estimates=save_estimates,
                  progress=progress, log=log)
