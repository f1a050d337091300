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

Methods: "model" (a separator) and the oracles ``oracle_<kind>``: the ideal masks of
``resunet_jax.masks.ORACLES`` (irm, irm_unbounded, cirm_bounded, cirm; the formulas are there),
computed from the true stems and applied to the mixture's STFT (n_fft 2048, hop 441, the paper
model's front end, ``resunet_jax.spectral``) then inverted, as upper bounds. The fraction of bins
with |S| > |X| (IRM > 1) is recorded per track and target for the oracles.

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

One module a concern (their public names are re-exported here):

  scoring        museval on one track: protocols, joint groups, the per-track JSON
  oracle         ideal-mask estimates of a track (masks from ``resunet_jax.masks``)
  track_sources  where the tracks come from: a MUSDB18 split, or tracks in memory
  results        the files above: per-track medians, aggregation, summaries, settings checks
  loop           ``evaluate`` (any track source) and ``evaluate_checkpoint`` (``eval.py``'s work)

Importing the package imports neither JAX nor TensorFlow (the scoring worker processes import it).
"""
from resunet_jax.evaluation.loop import evaluate
from resunet_jax.evaluation.loop import evaluate_checkpoint
from resunet_jax.evaluation.oracle import ORACLE_HOP
from resunet_jax.evaluation.oracle import ORACLE_N_FFT
from resunet_jax.evaluation.oracle import oracle_estimates
from resunet_jax.evaluation.results import aggregate
from resunet_jax.evaluation.results import format_table
from resunet_jax.evaluation.results import read_track_medians
from resunet_jax.evaluation.results import scored_methods
from resunet_jax.evaluation.results import track_json_path
from resunet_jax.evaluation.results import variables_fingerprint
from resunet_jax.evaluation.results import write_summary
from resunet_jax.evaluation.scoring import HOP
from resunet_jax.evaluation.scoring import METRICS
from resunet_jax.evaluation.scoring import PROTOCOLS
from resunet_jax.evaluation.scoring import WINDOW
from resunet_jax.evaluation.scoring import check_protocol
from resunet_jax.evaluation.scoring import joint_groups
from resunet_jax.evaluation.scoring import score_track
from resunet_jax.evaluation.scoring import track_json
from resunet_jax.evaluation.track_sources import InMemoryTracks
from resunet_jax.evaluation.track_sources import MusdbTracks
