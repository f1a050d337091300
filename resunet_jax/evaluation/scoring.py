"""Scoring one track with museval (BSS Eval v4, 1 s windows) by one of two protocols.

museval computes SDR/SIR/ISR/SAR on 1 s windows (win = hop = 44 100 samples, mode "v4":
time-invariant 512-tap distortion filters, ``padding=True``). The protocols (which estimates
museval sees together) are described in :mod:`resunet_jax.evaluation`.
"""
from typing import Dict, List, Sequence

import numpy as np

from resunet_jax import sources

PROTOCOLS = ("authors", "sisec_joint")
METRICS = ("SDR", "SIR", "ISR", "SAR")
WINDOW = HOP = sources.SAMPLE_RATE  # 1 s


def _museval(references, estimates):
  import museval  # pylint: disable=g-import-not-at-top
  sdr, isr, sir, sar = museval.evaluate(references, estimates, win=WINDOW, hop=HOP, mode="v4",
                                        padding=True)
  return [{"SDR": sdr[i], "SIR": sir[i], "ISR": isr[i], "SAR": sar[i]}
          for i in range(len(references))]


def joint_groups(targets: Sequence[str]) -> List[List[str]]:
  """The sets that ``museval.eval_mus_track`` scores together, in its order."""
  targets = [t for t in sources.TARGETS if t in targets]
  has_pair = "vocals" in targets and "accompaniment" in targets
  stems = [t for t in targets if t != "accompaniment"]
  groups = [stems] if len(stems) >= 2 else []
  if has_pair:
    groups.append(["vocals", "accompaniment"])
  return groups


def check_protocol(protocol, targets):
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  unknown = sorted(set(targets) - set(sources.TARGETS))
  if unknown:
    raise ValueError(f"targets {unknown} are not MUSDB18 sources {sources.TARGETS}")
  if protocol == "sisec_joint":
    scored = {t for g in joint_groups(targets) for t in g}
    if scored != set(targets):
      raise ValueError(
          f"protocol 'sisec_joint' scores at least two of {sources.STEMS} together, or vocals with "
          f"accompaniment; with targets {sorted(targets)} it cannot score {sorted(set(targets) - scored)}"
          " (for a vocals model add the residual accompaniment: residual=True / --residual)")


def score_track(references: Dict[str, np.ndarray], estimates: Dict[str, np.ndarray], protocol
                ) -> Dict[str, Dict[str, np.ndarray]]:
  """{target: {metric: per-window values}} for the estimated targets; arrays (L, C)."""
  check_protocol(protocol, list(estimates))
  scores = {}
  if protocol == "authors":
    for t in [t for t in sources.TARGETS if t in estimates]:
      scores[t] = _museval([references[t]], [estimates[t]])[0]
    return scores
  for group in joint_groups(list(estimates)):
    results = _museval([references[t] for t in group], [estimates[t] for t in group])
    for t, r in zip(group, results):
      scores[t] = r  # the (vocals, accompaniment) pair comes last and wins for vocals
  return {t: scores[t] for t in sources.TARGETS if t in scores}


def track_json(name, scores) -> str:
  """museval's per-track JSON (TrackStore: values quantised to 1e-5, inf -> NaN)."""
  import museval  # pylint: disable=g-import-not-at-top
  store = museval.TrackStore(track_name=name, win=WINDOW / sources.SAMPLE_RATE,
                              hop=HOP / sources.SAMPLE_RATE)
  for target, values in scores.items():
    store.add_target(target_name=target, values={m: np.asarray(values[m]).tolist()
                                                 for m in METRICS})
  store.validate()
  return store.json
