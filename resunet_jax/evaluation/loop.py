"""The evaluation loop: separate (or compute oracles for) each track, score it in worker processes.

:func:`evaluate` scores a separator and/or oracle masks on a track source; reruns resume in the same
``eval_dir``. :func:`evaluate_checkpoint` is ``eval.py``'s work: a model directory or training work
directory on a MUSDB18 split.
"""
import concurrent.futures
import json
import multiprocessing
import os
import warnings

import numpy as np

from resunet_jax import fileutil
from resunet_jax import sources
from resunet_jax.evaluation import oracle
from resunet_jax.evaluation import results
from resunet_jax.evaluation import scoring
from resunet_jax.evaluation import track_sources


def score_and_write(name, references, estimates, jobs):
  """Worker task: jobs = [(protocol, json path)]. Returns {protocol: {target: median SDR}}."""
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN medians
    for protocol, path in jobs:
      scores = scoring.score_track(references, estimates, protocol)
      results.write_text(path, scoring.track_json(name, scores))
      out[protocol] = {t: float(np.nanmedian(v["SDR"])) for t, v in scores.items()}
  return name, out


def evaluate(tracks, eval_dir, *, separator=None, oracles=(), oracle_targets=sources.TARGETS,
             protocols=("authors",), residual=False, workers=None, settings=None,
             save_estimates=False, progress=True, log=print) -> dict:
  """Scores a separator and/or oracle masks on ``tracks``; returns the summary (also written).

  Args:
    tracks: a track source (:class:`track_sources.MusdbTracks`, ``InMemoryTracks``).
    eval_dir: output folder, a local path or a gs:// URL (see :mod:`resunet_jax.evaluation`);
      reruns resume in it.
    separator: a ``separate.SongSeparator`` (method "model"), or None.
    oracles: oracle kinds to score (methods "oracle_<kind>") on ``oracle_targets``.
    protocols: any of ``scoring.PROTOCOLS``.
    residual: also score mixture - sum of the model's estimates under its residual name (e.g.
      accompaniment for a vocals model).
    workers: scoring processes (default: CPU count); 0 scores in this process.
    settings: {method: JSON-able description} of what is evaluated (checkpoint, chunking); a
      rerun in the same eval_dir must agree with what it holds for the same method (protocols,
      workers and progress may change; new methods are added).
  """
  fileutil.check_location(eval_dir, "eval_dir")
  eval_dir = str(fileutil.as_path(eval_dir))
  protocols = list(protocols)
  methods = {}
  if separator is not None:
    methods["model"] = separator.output_names(residual)
  oracle.check_kinds(oracles)
  for kind in oracles:
    methods["oracle_" + kind] = list(oracle_targets)
  if not methods:
    raise ValueError("nothing to evaluate: give a separator and/or oracles")
  for targets in methods.values():
    for p in protocols:
      scoring.check_protocol(p, targets)
  split = tracks.split
  settings = settings or {}
  results.check_settings(eval_dir, {"tracks": tracks.describe(),
                                    "window_seconds": scoring.WINDOW / sources.SAMPLE_RATE},
                         {m: dict(settings.get(m, {}), targets=t) for m, t in methods.items()})
  names = tracks.names()
  if not names:
    raise ValueError(f"split {split!r} has no tracks")

  todo = {}  # {track: {method: [(protocol, json path)]}}: what is not scored yet
  for n in names:
    for m in methods:
      for p in protocols:
        path = results.track_json_path(eval_dir, m, p, split, n)
        if not fileutil.as_path(path).exists():
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
  stats_dir = fileutil.join(eval_dir, "oracle_stats", split)

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
          estimates, above_one = oracle.oracle_estimates(mixture, track["stems"], methods[method],
                                                         method[len("oracle_"):])
          stats_path = fileutil.join(stats_dir, results.safe_name(name) + ".json")
          if not fileutil.as_path(stats_path).exists():
            results.write_text(stats_path,
                               json.dumps({"irm_above_one": above_one}, indent=2) + "\n")
        if save_estimates:
          results.save_estimates(eval_dir, method, name, estimates)
        references = {t: track["stems"][t] for t in estimates}
        if executor is None:
          finished(score_and_write(name, references, estimates, jobs))
        else:
          drain(workers - 1)  # at most `workers` tracks wait in memory
          futures.add(executor.submit(score_and_write, name, references, estimates, jobs))
    drain(0)
  finally:
    if executor is not None:
      executor.shutdown(wait=True, cancel_futures=True)
    if bar is not None:
      bar.close()

  missing = [n for n in names
             if any(not fileutil.as_path(results.track_json_path(eval_dir, m, p, split, n)).exists()
                    for m in methods for p in protocols)]
  if missing:
    raise RuntimeError(f"tracks {missing} were not scored (not delivered by the track source)")
  return results.write_summary(eval_dir, split, names, log=log)


def replica_folder(k: int) -> str:
  """The folder of replica k's evaluation in a replicated run's evaluation tree."""
  return f"replica_{int(k)}"


def evaluate_checkpoint(checkpoint_path=None, data_config=None, *, eval_dir=None, split=None,
                        num_tracks=None, track_names=None, protocols=("authors",), oracles=(),
                        oracle_targets=sources.TARGETS, residual=False, scheme="authors",
                        chunk_seconds=30.0, overlap_seconds=10.0, batch_size=1, workers=None,
                        save_estimates=False, conv_backend="xla", progress=True,
                        log=print, replica=None) -> dict:
  """``eval.py``'s work: a model directory or training workdir (and/or oracles) on a MUSDB18 split.

  ``checkpoint_path`` and ``eval_dir`` may be local paths or gs:// URLs.
  ``data_config``: the data config (``config.data`` of a training config); None = the default
  one (the built-in data unless manual_dir is set). The default chunking is the authors' (30 s
  chunks, 15 s hop), as in their evaluation. eval_dir defaults to <checkpoint>/eval/<split>
  (<workdir>/eval/step_<n>/<split> for a training work directory). ``conv_backend`` picks the
  model's convolution backend (``resunet_jax.backends``; results are the same up to rounding).

  ``replica``: which replica of a replicated training run (``config.replicas`` > 1) to score
  (``checkpoint.load_model``; required for such a run). Replica k's results go to
  <workdir>/eval/step_<n>/replica_<k>/<split>, or with an explicit ``eval_dir`` D to
  D/replica_<k> (what D holds for one run). One-run checkpoints keep the layout above.
  """
  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from resunet_jax import separate  # pylint: disable=g-import-not-at-top
  fileutil.check_location(checkpoint_path, "checkpoint")
  fileutil.check_location(eval_dir, "eval_dir")
  if data_config is None:
    from resunet_jax.data import recipes  # pylint: disable=g-import-not-at-top
    data_config = recipes.default_data_config()
  fileutil.check_location(data_config.get("data_dir"), "data.data_dir")
  tracks = track_sources.MusdbTracks(data_config, split, num_tracks=num_tracks,
                                     track_names=track_names)
  settings, separator = {}, None
  if checkpoint_path:
    checkpoint_path = str(fileutil.as_path(checkpoint_path))
    model, variables, desc = checkpoint.load_model(checkpoint_path, replica=replica,
                                                   conv_backend=conv_backend)
    metadata = desc.get("metadata") or {}
    replica_dir = []  # replicated training runs: one folder per replica
    if (not checkpoint.is_model_dir(checkpoint_path)
        and int(metadata.get("replicas", 1) or 1) > 1):  # (a model directory is one model)
      replica_dir = [replica_folder(metadata["replica"])]
      if eval_dir is not None:
        eval_dir = fileutil.join(eval_dir, *replica_dir)
    separator = separate.SongSeparator.from_model(
        model, variables, desc["sources"], scheme=scheme, chunk_seconds=chunk_seconds,
        overlap_seconds=overlap_seconds, batch_size=batch_size)
    plan = separator.plan
    settings["model"] = {"checkpoint": checkpoint_path, "arch": desc.get("arch"),
                         "sources": list(desc["sources"]), "residual": bool(residual),
                         "variables_sha1": results.variables_fingerprint(variables),
                         **({"replica": metadata["replica"], "seed": metadata.get("seed")}
                            if replica_dir else {}),
                         "chunking": {"scheme": plan.scheme, "chunk": plan.chunk, "hop": plan.hop,
                                      "batch_size": batch_size}}
    if eval_dir is None:
      step = metadata.get("step")  # set for training work directories
      eval_dir = fileutil.join(checkpoint_path, "eval",
                               *([f"step_{step}"] if step is not None else []), *replica_dir,
                               tracks.split)
  elif not oracles:
    raise ValueError("give a checkpoint (model directory or training workdir) and/or oracles")
  if eval_dir is None:
    raise ValueError("an oracle-only evaluation needs an eval_dir")
  for kind in oracles:
    settings["oracle_" + kind] = {"n_fft": oracle.ORACLE_N_FFT, "hop": oracle.ORACLE_HOP}
  return evaluate(tracks, eval_dir, separator=separator, oracles=oracles,
                  oracle_targets=oracle_targets, protocols=protocols, residual=residual,
                  workers=workers, settings=settings, save_estimates=save_estimates,
                  progress=progress, log=log)
