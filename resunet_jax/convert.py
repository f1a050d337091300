"""Conversion of the authors' (bytesep) PyTorch checkpoints into Flax variables.

    from resunet_jax import convert
    model, variables = convert.from_bytesep("resunet143_subbtandtime_vocals_8.7dB_500k_steps_v2.pth",
                                            arch="resunet143_subbandtime")
    y = model.apply(variables, waveform, train=False)   # (B, L, 2) -> (B, 1, L, 2)

Command line (writes an Orbax model directory, see ``resunet_jax.checkpoint``):

    python -m resunet_jax.convert IN.pth OUT_DIR --arch resunet143_subbandtime [--sources vocals]

Reading a ``.pth`` file needs ``torch`` (``pip install 'resunet_jax[torch]'``); a state dict of
numpy arrays (or a ``.npz`` file of one) needs nothing beyond numpy.

Mapping (REFERENCE §8.3): a key ``a.b.c.weight`` goes to the Flax path ``a/b/c/...``:
1-D ``weight``/``bias`` of a BatchNorm -> params ``scale``/``bias``; ``running_mean``/``running_var``
-> batch_stats ``mean``/``var``; Conv2d weights OIHW -> HWIO kernels; ConvTranspose2d weights
(in, out, kT, kF) -> (kT, kF, in, out); InPlaceABN ``abn2.weight`` -> scale |w| + 1e-5.
``num_batches_tracked`` is dropped. The frozen front-end tensors ``stft.*`` and ``istft.*`` are
checked against this library's STFT constants; ``pqmf.*`` carry the authors' subband filters and
become the model's ``constants``. Unknown, missing and mis-shaped keys are refused, all of them
listed in one error.
"""
import argparse
import os
import re
import sys

import jax
import numpy as np

from resunet_jax import checkpoint
from resunet_jax import fileutil
from resunet_jax import models
from resunet_jax import pqmf
from resunet_jax import sources as sources_lib
from resunet_jax import spectral

ABN_EPS = 1e-5
FROZEN_PREFIXES = ("stft.", "istft.", "pqmf.")


class ConversionError(ValueError):
  """A checkpoint that does not fit the requested architecture."""


# ------------------------------------------------------------------------------------------------
# Reading.


def read_state_dict(source):
  """A flat {key: float numpy array} from a .pth / .npz path or an in-memory mapping.

  Accepts the released files' ``{"step": ..., "model": state_dict}`` and a bare state dict.
  """
  step = None
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    else:
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install 'resunet_jax[torch]' (or convert the "
            "state dict to numpy arrays and pass the dict / an .npz file)") from e
      try:
        state = torch.load(path, map_location="cpu", weights_only=True)
      except Exception as e:  # pylint: disable=broad-except
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
  else:
    state = source
  if not isinstance(state, dict):
    raise ConversionError(f"expected a state dict (mapping of key -> tensor), got {type(state)}")
  if "model" in state and isinstance(state["model"], dict):
    step = state.get("step")
    state = state["model"]
  out = {}
  for key, value in state.items():
    if hasattr(value, "detach"):  # torch tensor
      value = value.detach().cpu().numpy()
    out[str(key)] = np.asarray(value)
  return out, step


def detect_arch(state):
  """Guesses the bytesep architecture from the keys of a state dict."""
  keys = set(state)
  if any(".conv_block.conv1a." in k or k.startswith("conv_block7.conv1a") for k in keys):
    return "mobilenet_subbandtime"
  if any(".abn2." in k for k in keys):
    return "resunet143_ismir2021"
  if any(k.startswith("pqmf.") for k in keys) or state.get("bn0.weight", np.zeros(0)).shape == (257,):
    return "resunet143_subbandtime"
  if state.get("bn0.weight", np.zeros(0)).shape == (1025,):
    raise ConversionError(
        "state dict has a 1025-bin bn0 but no abn2 layers: it looks like bytesep's "
        "ResUNet143_DecouplePlus (resunet.py), which has no released checkpoint and is not "
        "supported")
  raise ConversionError("cannot tell the architecture from the keys; pass arch=...")


def _infer_io(state, arch):
  """(audio_channels, num_sources) from the shapes of the first conv and the head."""
  first = state.get("encoder_block1.conv_block1.conv1.weight")
  if first is None:
    first = state.get("encoder_block1.conv_block.conv1a.weight")
  head = state.get("after_conv2.weight")
  if first is None or head is None:
    return 2, 1
  fields = models.ARCHITECTURES[arch]
  bands = max(fields["subbands"], 1)
  channels = first.shape[1] // bands
  k = 4  # every released architecture uses a 4-output Decouple+ mask
  sources = head.shape[0] // (channels * k * bands)
  return int(channels), max(int(sources), 1)


# ------------------------------------------------------------------------------------------------
# Frozen front-end constants.


def _expected_frozen(n_fft):
  w = spectral.hann_window(n_fft)
  k = np.arange(n_fft // 2 + 1)[:, None]
  n = np.arange(n_fft)[None, :]
  angle = 2 * np.pi * k * n / n_fft
  nn_ = np.arange(n_fft)[:, None]
  kk = np.arange(n_fft)[None, :]
  iangle = 2 * np.pi * nn_ * kk / n_fft
  return {
      "stft.conv_real.weight": (np.cos(angle) * w)[:, None, :],
      "stft.conv_imag.weight": (-np.sin(angle) * w)[:, None, :],
      # torchlibrosa's ISTFT conv: weight[n, k, 0] = Re/Im(exp(2 pi i k n / N)) w[n] / N.
      "istft.conv_real.weight": (np.cos(iangle) * w[:, None] / n_fft)[:, :, None],
      "istft.conv_imag.weight": (np.sin(iangle) * w[:, None] / n_fft)[:, :, None],
      "istft.ola_window": w ** 2,
  }


def _check_frozen(state, fields, problems):
  """Checks stft./istft. tensors against our constants; returns PQMF filters if present."""
  expected = _expected_frozen(fields["n_fft"])
  for key, value in state.items():
    if not key.startswith(("stft.", "istft.")):
      continue
    if key not in expected:
      problems["unknown"].append(key)
      continue
    want = expected[key]
    if value.shape != want.shape:
      problems["shape"].append(f"{key}: {tuple(value.shape)}, expected {tuple(want.shape)}")
      continue
    err = float(np.max(np.abs(value.astype(np.float64) - want)))
    tol = 1e-5 * float(np.max(np.abs(want)))
    if not err <= tol:
      problems["value"].append(
          f"{key}: differs from the {fields['n_fft']}-point periodic-Hann STFT constants by "
          f"{err:.3g} (tolerance {tol:.3g})")
  ana_key, syn_key = "pqmf.ana_conv_filter.weight", "pqmf.syn_conv_filter.weight"
  pqmf_keys = [k for k in state if k.startswith("pqmf.")]
  for key in pqmf_keys:
    if key not in (ana_key, syn_key):
      problems["unknown"].append(key)
  if not fields["subbands"]:
    for key in pqmf_keys:
      if key in (ana_key, syn_key):
        problems["unknown"].append(key)
    return None
  if ana_key not in state or syn_key not in state:
    return None
  bands, taps = fields["subbands"], pqmf.NUM_TAPS
  ana_w, syn_w = state[ana_key], state[syn_key]
  ok = True
  for key, value, want in ((ana_key, ana_w, (bands, 1, taps)),
                           (syn_key, syn_w, (bands, bands, taps // bands))):
    if value.shape != want:
      problems["shape"].append(f"{key}: {tuple(value.shape)}, expected {want}")
      ok = False
  if not ok:
    return None
  ana, syn = pqmf.filters_from_kernels(ana_w, syn_w)
  # The two kernels must describe one filter bank that reconstructs its input.
  x = np.random.default_rng(0).standard_normal(4096)
  y = np.asarray(pqmf.round_trip(x[None].astype(np.float32), ana.astype(np.float32),
                                 syn.astype(np.float32)))[0]
  snr = 10 * np.log10(np.sum(x[:y.size] ** 2) / max(np.sum((y - x[:y.size]) ** 2), 1e-30))
  if not snr >= 60.0:
    problems["value"].append(
        f"{ana_key}/{syn_key}: the PQMF analysis/synthesis pair does not reconstruct its input "
        f"(round-trip SNR {snr:.1f} dB, expected > 60 dB)")
    return None
  return ana, syn


# ------------------------------------------------------------------------------------------------
# Key mapping.


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


_BN_SUFFIX = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _target(key, value, backbone, abn_scale=True):
  """(collection, flax path, converted array) for one state-dict entry."""
  parts = key.split(".")
  module, leaf = tuple(parts[:-1]), parts[-1]
  if value.ndim == 4:  # conv kernels
    if leaf != "weight":
      return None
    is_transposed = (backbone == "resunet" and len(module) == 2
                     and re.fullmatch(r"decoder_block\d+", module[0]) and module[1] == "conv1")
    if is_transposed:  # ConvTranspose2d (in, out, kT, kF) -> (kT, kF, in, out)
      return "params", module + ("kernel",), np.transpose(value, (2, 3, 0, 1))
    return "params", module + ("kernel",), np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  if value.ndim == 1 and leaf == "bias" and module[-1] in ("shortcut", "after_conv2"):
    return "params", module + ("bias",), value
  if value.ndim == 1 and leaf in _BN_SUFFIX:
    collection, name = _BN_SUFFIX[leaf]
    if abn_scale and leaf == "weight" and module[-1] == "abn2":
      value = np.abs(value.astype(np.float64)) + ABN_EPS  # InPlaceABN: |gamma| + eps
    return collection, module + (name,), value
  return None


def flax_variable(key, value, arch, *, abn_scale=True):
  """Where one state-dict tensor goes: ``(collection, path, value in Flax layout)``, or None for a
  key that is no variable (frozen ``stft.``/``istft.``/``pqmf.`` tensors, ``num_batches_tracked``).

  ``path`` is a tuple of names inside ``variables[collection]``. With ``abn_scale=False`` an
  InPlaceABN weight keeps its value (only the layout is converted): for tensors shaped like the
  parameters that are not parameter values, e.g. gradients or optimiser moments.
  """
  if key.startswith(FROZEN_PREFIXES) or key.endswith("num_batches_tracked"):
    return None
  return _target(key, np.asarray(value), models.ARCHITECTURES[arch]["backbone"], abn_scale)


def _permute_v1_head(state, audio_channels, num_sources, bands):
  """v1 (350k-step) subband files: head rows (s, c, j, k) -> (s, c, k, j) (REFERENCE §4.3)."""
  k = 4
  for key in ("after_conv2.weight", "after_conv2.bias"):
    value = state[key]
    rows = value.reshape((num_sources, audio_channels, bands, k) + value.shape[1:])
    state[key] = np.swapaxes(rows, 2, 3).reshape(value.shape)


def from_bytesep(source, arch=None, *, head_layout="v2", pqmf_filters=None, dtype=np.float32,
                 **model_overrides):
  """Converts a bytesep checkpoint into ``(model, variables)``.

  Args:
    source: path of a ``.pth`` (torch.save of ``{"step", "model"}`` or a bare state dict) or
      ``.npz`` file, or a mapping of key -> array / tensor.
    arch: "resunet143_ismir2021", "resunet143_subbandtime" or "mobilenet_subbandtime"; None
      guesses it from the keys.
    head_layout: "v2" (the 500k-step "v2" files and the ISMIR files) or "v1" (the 350k-step
      subband files of Zenodo 5513378, whose head rows are ordered differently).
    pqmf_filters: (analysis, synthesis) arrays (4, 64) for a subband state dict that lacks the
      ``pqmf.*`` tensors, e.g. ``pqmf.load_mat_filters(dir)``.
    dtype: dtype of the returned arrays.
    **model_overrides: Separator fields to set (e.g. ``precision="highest"``).

  Returns:
    (model, variables) with ``variables = {"params", "batch_stats"[, "constants"]}``.
  """
  state, _ = read_state_dict(source)
  if arch is None:
    arch = detect_arch(state)
  if arch not in models.ARCHITECTURES:
    raise ConversionError(f"unknown arch {arch!r}; expected one of {sorted(models.ARCHITECTURES)}")
  if head_layout not in ("v1", "v2"):
    raise ConversionError(f"head_layout must be 'v1' or 'v2', got {head_layout!r}")
  fields = models.ARCHITECTURES[arch]
  audio_channels, num_sources = _infer_io(state, arch)
  model_overrides.setdefault("audio_channels", audio_channels)
  model_overrides.setdefault("num_sources", num_sources)
  model = models.build_model(arch, **model_overrides)

  problems = {"unknown": [], "missing": [], "shape": [], "value": []}
  filters = _check_frozen(state, fields, problems)
  if fields["subbands"] and filters is None and pqmf_filters is not None:
    filters = tuple(np.asarray(f, np.float64) for f in pqmf_filters)
  if fields["subbands"] and filters is None and not problems["shape"] + problems["value"]:
    problems["missing"].append(
        "pqmf.ana_conv_filter.weight, pqmf.syn_conv_filter.weight (the authors' subband "
        "filters; or pass pqmf_filters=pqmf.load_mat_filters(dir))")

  trainable = {k: v for k, v in state.items()
               if not k.startswith(FROZEN_PREFIXES) and not k.endswith("num_batches_tracked")}
  if head_layout == "v1":
    if not fields["subbands"]:
      raise ConversionError("head_layout='v1' applies to the 350k-step subband checkpoints only")
    if "after_conv2.weight" in trainable and "after_conv2.bias" in trainable:
      _permute_v1_head(trainable, model.audio_channels, model.num_sources, fields["subbands"])

  abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
  expected = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in _flatten(abstract[collection]).items():
      expected[(collection,) + path] = tuple(leaf.shape)

  flat, seen = {}, set()
  for key, value in trainable.items():
    target = _target(key, value, fields["backbone"])
    if target is None:
      problems["unknown"].append(key)
      continue
    collection, path, converted = target
    full = (collection,) + path
    if full not in expected:
      problems["unknown"].append(key)
      continue
    seen.add(full)
    if tuple(converted.shape) != expected[full]:
      problems["shape"].append(f"{key}: {tuple(value.shape)} does not fit {'/'.join(full)} "
                               f"{expected[full]}")
      continue
    flat[full] = np.asarray(converted, dtype)
  for full in expected:
    if full not in seen:
      problems["missing"].append(_torch_key(full))

  if any(problems.values()):
    raise ConversionError(_format_problems(problems, arch))

  variables = _unflatten(flat)
  if fields["subbands"]:
    ana, syn = filters
    variables["constants"] = {"pqmf_analysis": np.asarray(ana, dtype),
                              "pqmf_synthesis": np.asarray(syn, dtype)}
  return model, variables


def _torch_key(full):
  """The state-dict key a Flax path comes from (for 'missing key' messages)."""
  collection, *path = full
  module, leaf = path[:-1], path[-1]
  names = {("params", "scale"): "weight", ("params", "bias"): "bias",
           ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
           ("params", "kernel"): "weight"}
  return ".".join(list(module) + [names.get((collection, leaf), leaf)])


def _format_problems(problems, arch):
  lines = [f"checkpoint does not fit architecture {arch!r}:"]
  titles = {"unknown": "unknown keys", "missing": "missing keys", "shape": "mis-shaped keys",
            "value": "wrong frozen constants"}
  for kind in ("unknown", "missing", "shape", "value"):
    items = problems[kind]
    if not items:
      continue
    lines.append(f"  {titles[kind]} ({len(items)}):")
    for item in items[:25]:
      lines.append(f"    {item}")
    if len(items) > 25:
      lines.append(f"    ... and {len(items) - 25} more")
  return "\n".join(lines)


def _guess_sources(path):
  name = os.path.basename(str(path)).lower()
  # The first name found: accompaniment (a sum of stems), then the stems in musdb's order.
  for source in sorted(sources_lib.TARGETS, key=lambda s: len(sources_lib.stems_of(s)) == 1):
    if source in name:
      return [source]
  return None


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m resunet_jax.convert",
      description="Convert a bytesep (PyTorch) checkpoint into a resunet_jax model directory.")
  parser.add_argument("input", help="bytesep .pth file (needs torch) or .npz state dict")
  parser.add_argument("out_dir", help="model directory to write, a local path or gs:// URL (must "
                      "not exist, see --force)")
  parser.add_argument("--arch", choices=sorted(models.ARCHITECTURES), default=None,
                      help="architecture (default: detected from the keys)")
  parser.add_argument("--sources", default=None,
                      help="comma-separated target source names (default: from the file name, "
                           "else 'vocals')")
  parser.add_argument("--head_layout", choices=("v1", "v2"), default="v2",
                      help="v1 for the 350k-step subband files of Zenodo 5513378")
  parser.add_argument("--pqmf_dir", default=None,
                      help="directory with f_4_64.mat / h_4_64.mat, for subband state dicts "
                           "without pqmf.* tensors")
  parser.add_argument("--force", action="store_true", help="replace an existing out_dir")
  args = parser.parse_args(argv)

  try:
    fileutil.check_location(args.out_dir, "out_dir")  # before any work
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  filters = pqmf.load_mat_filters(args.pqmf_dir) if args.pqmf_dir else None
  try:
    state, step = read_state_dict(args.input)
    model, variables = from_bytesep(state, args.arch, head_layout=args.head_layout,
                                    pqmf_filters=filters)
  except (ConversionError, FileNotFoundError, ImportError) as e:
    print(f"error: {args.input}: {e}", file=sys.stderr)
    return 2
  arch = args.arch or detect_arch(state)
  sources = (args.sources.split(",") if args.sources else _guess_sources(args.input)
             or ["vocals"])
  if len(sources) != model.num_sources:
    print(f"error: --sources names {len(sources)} source(s) but the checkpoint has "
          f"{model.num_sources}", file=sys.stderr)
    return 2
  try:
    out = checkpoint.save_model(
        args.out_dir, model, variables, arch=arch, sources=sources, overwrite=args.force,
        metadata={"converted_from": os.path.abspath(args.input), "step": step,
                  "head_layout": args.head_layout})
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = models.count_params(variables["params"])
  print(f"wrote {out}: {arch}, {n:,} trainable parameters, sources {sources}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
