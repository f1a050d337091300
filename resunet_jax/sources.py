"""MUSDB18's sources and the sample rate: the one place they are defined.

Every model, data pipeline, evaluation and separation works at 44.1 kHz (REFERENCE §0). MUSDB18
has four stems; "accompaniment" is their non-vocal sum (drums + bass + other), as musdb and the
authors define it.
"""
from typing import Dict, Tuple

SAMPLE_RATE = 44100

STEMS: Tuple[str, ...] = ("drums", "bass", "other", "vocals")  # MUSDB18's stems (stream order)
# Every source a model can be trained on or scored for, and the stems it is the sum of.
SOURCE_STEMS: Dict[str, Tuple[str, ...]] = {
    "drums": ("drums",), "bass": ("bass",), "other": ("other",), "vocals": ("vocals",),
    "accompaniment": ("drums", "bass", "other"),
}
# musdb's target order (museval's tables).
TARGETS: Tuple[str, ...] = ("vocals", "drums", "bass", "other", "accompaniment")


def stems_of(source: str) -> Tuple[str, ...]:
  try:
    return SOURCE_STEMS[source]
  except KeyError:
    raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCE_STEMS)}") from None
