"""Spectral masks: how the network's head outputs turn the mixture spectrum into a source spectrum.

This is the one place where the mask formulas live. Each mask takes, per (source, channel
[, subband]) and time-frequency bin, K head outputs (logits) and the mixture's magnitude |X| and
phase (cos, sin) as ``spectral.magnitude_phase`` gives them, and returns the estimated spectrum as
(magnitude, cos, sin) of the output.

``decouple_plus`` is the paper's mask (REFERENCE §3), K = 4 logits (m, p_r, p_i, Q):

  |Y|   = relu(|X| * sigmoid(m) + Q)                    (Q unbounded; tanh(Q) in the subband models)
  angle = angle(X) + angle(M),  (cos M, sin M) = (tanh p_r, tanh p_i) / max(|.|, 1e-10)

so the effective magnitude mask sigmoid(m) + Q / |X| can exceed 1, and the phase is the mixture
phase rotated by the estimated mask phase (angle-sum identities, no atan2).

The ablation variants:
  ``decouple_plus_bounded``: Decouple+ with Q = tanh(.), as the released subband models use;
  ``decouple``:              Decouple+ without the additive term (K = 3), magnitude mask <= 1;
  ``irm``:                   magnitude-only ratio mask sigmoid(m), mixture phase kept (K = 1);
  ``cirm``:                  bounded complex ratio mask M = tanh(a) + j tanh(b) (K = 2),
                             Y = M X, so |M| < sqrt(2);
  ``magnitude_plus``:        Decouple+'s magnitude (sigmoid mask + tanh additive term, K = 2) with
                             the mixture's phase: Decouple+ without its phase estimate.
A new mask is a function registered with ``@register(name, num_outputs=K)``; the model sizes its
head from K, so ``--config.model.mask=<name>`` trains it with no other change. Registered in a
module of one's own, it reaches the command-line tools with ``--import=<module>``
(``resunet_jax.cli.program``); a saved model records that module (``module_of``).

Oracle (ideal) masks, computed from the true source spectrum S instead of head outputs: upper
bounds of what a mask of each family can do (``resunet_jax.evaluation`` scores them). Each takes the
complex spectra X and S and returns the masked mixture Y:

  ``irm``:           M = min(|S| / |X|, 1), mixture phase (the bounded ideal ratio mask);
  ``irm_unbounded``: M = |S| / |X|, mixture phase (|Y| = |S|; needs M > 1 where |S| > |X|, about
                     22 % of the bins by the paper's count);
  ``cirm_bounded``:  magnitude min(|S|, |X|) with the true phase: the best a magnitude mask <= 1
                     with a free phase (the paper's "Decouple" mask) can do;
  ``cirm``:          M = S / X (magnitude ratio and phase difference, unbounded), Y = M X = S: the
                     decoupled complex ideal ratio mask; it recovers the source (up to the STFT
                     round trip).
"""
import jax
import jax.numpy as jnp

# Lower clamp of the mask-phase norm (torchlibrosa ``magphase``).
PHASE_EPS = 1e-10


def _unit_phase(real, imag):
  """(real, imag) / max(|.|, 1e-10); (0, 0) stays (0, 0).

  The square root takes max(r^2, eps^2) rather than max(r, eps) so that its gradient is finite at
  exactly zero (the zero-padded Nyquist bin); the two agree except below eps.
  """
  norm = jnp.sqrt(jnp.maximum(real * real + imag * imag, PHASE_EPS * PHASE_EPS))
  return real / norm, imag / norm


def _rotate(cos_x, sin_x, cos_m, sin_m):
  return cos_x * cos_m - sin_x * sin_m, sin_x * cos_m + cos_x * sin_m


def _decoupled(logits, mag, cos, sin, additive):
  magnitude_mask = jax.nn.sigmoid(logits[..., 0])
  cos_m, sin_m = _unit_phase(jnp.tanh(logits[..., 1]), jnp.tanh(logits[..., 2]))
  out_mag = mag * magnitude_mask
  if additive is not None:
    out_mag = jax.nn.relu(out_mag + additive(logits[..., 3]))
  out_cos, out_sin = _rotate(cos, sin, cos_m, sin_m)
  return out_mag, out_cos, out_sin


def _decouple_plus(logits, mag, cos, sin):
  return _decoupled(logits, mag, cos, sin, additive=lambda q: q)


def _decouple_plus_bounded(logits, mag, cos, sin):
  return _decoupled(logits, mag, cos, sin, additive=jnp.tanh)


def _decouple(logits, mag, cos, sin):
  return _decoupled(logits, mag, cos, sin, additive=None)


def _irm(logits, mag, cos, sin):
  return mag * jax.nn.sigmoid(logits[..., 0]), cos, sin


def _cirm(logits, mag, cos, sin):
  m_re, m_im = jnp.tanh(logits[..., 0]), jnp.tanh(logits[..., 1])
  # Y = M X with X = |X| (cos + j sin): magnitude |X||M|, phase angle(X) + angle(M).
  m_abs = jnp.sqrt(m_re * m_re + m_im * m_im)
  cos_m, sin_m = _unit_phase(m_re, m_im)
  out_cos, out_sin = _rotate(cos, sin, cos_m, sin_m)
  return mag * m_abs, out_cos, out_sin


# name -> (number of head outputs K, function)
MASKS = {
    "decouple_plus": (4, _decouple_plus),
    "decouple_plus_bounded": (4, _decouple_plus_bounded),
    "decouple": (3, _decouple),
    "irm": (1, _irm),
    "cirm": (2, _cirm),
}


def register(name, num_outputs):
  """Decorator adding a mask to ``MASKS``: ``fn(logits (..., K), mag, cos, sin) -> (mag, cos,
  sin)`` of the estimate, K = ``num_outputs``. The model sizes its head from K, so a registered
  mask is usable at once: ``--config.model.mask=<name>`` or ``build_model(..., mask=<name>)``."""
  def add(fn):
    if name in MASKS:
      raise ValueError(f"mask {name!r} is already registered")
    MASKS[name] = (int(num_outputs), fn)
    return fn
  return add


@register("magnitude_plus", num_outputs=2)
def _magnitude_plus(logits, mag, cos, sin):
  """Decouple+'s magnitude (sigmoid mask plus a tanh-bounded additive term, so the effective
  mask can exceed 1) with the mixture's phase: Decouple+ without its phase estimate, for
  ablations of the phase."""
  out_mag = jax.nn.relu(mag * jax.nn.sigmoid(logits[..., 0]) + jnp.tanh(logits[..., 1]))
  return out_mag, cos, sin


def module_of(kind):
  """The module that registered mask ``kind`` (``fn.__module__``; ``resunet_jax.masks`` for the
  built-in ones), recorded in a saved model's description so that loading it without that module
  can say what to import. None for an unknown mask."""
  entry = MASKS.get(kind)
  return None if entry is None else getattr(entry[1], "__module__", None)


def num_outputs(kind):
  """K, the number of head outputs per (source, channel[, subband]) that mask ``kind`` needs."""
  return _lookup(kind)[0]


def _lookup(kind):
  try:
    return MASKS[kind]
  except KeyError:
    raise ValueError(f"unknown mask {kind!r}; expected one of {sorted(MASKS)}") from None


def apply_mask(kind, logits, mag, cos, sin):
  """Estimated spectrum from head logits (..., K) and the mixture's (mag, cos, sin) (...).

  Returns the complex spectrum |Y| (cos Y + j sin Y), shape (...).
  """
  k, fn = _lookup(kind)
  if logits.shape[-1] != k:
    raise ValueError(f"mask {kind!r} takes {k} logits per bin, got {logits.shape[-1]}")
  out_mag, out_cos, out_sin = fn(logits, mag, cos, sin)
  return jax.lax.complex(out_mag * out_cos, out_mag * out_sin)


# ------------------------------------------------------------------------------------------------
# Oracle masks: from the true source spectrum.

# Lower clamp of |X| and |S| in the oracle ratios (a bin with |X| = 0 gets mask 0 there).
ORACLE_EPS = 1e-12


def _oracle_irm(x, s, mag_x, mag_s):
  return jnp.clip(mag_s / jnp.maximum(mag_x, ORACLE_EPS), 0.0, 1.0) * x


def _oracle_irm_unbounded(x, s, mag_x, mag_s):
  del s
  return mag_s * (x / jnp.maximum(mag_x, ORACLE_EPS))  # |S| times the mixture's unit phasor


def _oracle_cirm_bounded(x, s, mag_x, mag_s):
  del x
  return jnp.minimum(mag_s, mag_x) * (s / jnp.maximum(mag_s, ORACLE_EPS))


def _oracle_cirm(x, s, mag_x, mag_s):
  del mag_s
  # M = S / X = S conj(X) / |X|^2, applied to X.
  return (s * jnp.conj(x) / jnp.maximum(mag_x * mag_x, ORACLE_EPS * ORACLE_EPS)) * x


# name -> function (X, S, |X|, |S|) -> Y
ORACLES = {
    "irm": _oracle_irm,
    "irm_unbounded": _oracle_irm_unbounded,
    "cirm_bounded": _oracle_cirm_bounded,
    "cirm": _oracle_cirm,
}


def oracle_mask(kind, mixture_spec, source_spec):
  """The mixture spectrum X masked by the ideal mask ``kind`` of the true source spectrum S.

  ``mixture_spec``, ``source_spec``: complex arrays of one shape (e.g. (T, F) from
  ``spectral.stft``). Returns the complex spectrum Y of that shape.
  """
  try:
    fn = ORACLES[kind]
  except KeyError:
    raise ValueError(f"unknown oracle {kind!r}; expected one of {tuple(ORACLES)}") from None
  return fn(mixture_spec, source_spec, jnp.abs(mixture_spec), jnp.abs(source_spec))
