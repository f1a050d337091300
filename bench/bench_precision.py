r"""Float32 / bfloat16 accuracy of a separator against bytesep's float64 model, stage by stage.

    python bench/bench_precision.py                    # paper model, stempeg's excerpt, rule weights
    python bench/bench_precision.py --bn_stats=input --dtypes=float32/plain,float32,bfloat16
    python bench/bench_precision.py --weights=/tmp/workdir --audio=song.wav --offset=30 --seconds=10

Expected run time: ~10 minutes on 2 CPU cores for the 6 s excerpt (bytesep's float64 run is half of
it); the stage arrays take ~3 GB in ``--cache`` (a temporary folder, removed at the end, if not
given).

Input: ``--seconds`` of real music from ``--offset`` s: by default the mixture of the MUSDB18 excerpt
that ships with stempeg (``stempeg.example_stem_path()``, 6.08 s, read by
``resunet_jax.data.stems_io``; its vocals stem gives the SDR column), or any audio file
(``resunet_jax.audio.read_audio``). Weights: ``rule`` (the parity fixtures' ``WEIGHT_RULE``, seed 1,
converted by ``resunet_jax.convert``), a bytesep state dict (``.pth`` / ``.npz``), or one of our
model directories / training work directories (converted back to bytesep's layout for its side).
``--bn_stats=input`` replaces every BatchNorm's running statistics by those of the input (so that
each layer sees normalised activations, as in a fully trained network; ``bn0`` then scales the quiet
bins up).

Each model runs in a fresh process (``bench/workers.py``) and saves every stage's output:

  bytesep float64   the reference: bytesep built under ``torch.set_default_dtype(torch.float64)``
                    (torchlibrosa's DFT bases included), stages caught by forward hooks;
  bytesep float32   PyTorch's own float32 (what the port should be about as close as);
  ours float64      jax x64 (sanity: ~1e-11 from the reference);
  ours float32 / bfloat16   ``dtype=`` the model's compute dtype (parameters float32), on XLA:CPU with
                    the XLA flags the command-line tools set (``runtime.CPU_XLA_FLAGS``;
                    ``--xla_flags=none`` runs without them).

Stages (all compared in one layout, relative L2 over the whole tensor against bytesep float64):
``stft`` (complex spectrum, real and imaginary parts), ``mag``, ``phase`` (cos, sin), ``bn0``, every
encoder / centre / decoder stage's output, ``after_conv_block1``, ``head`` (``after_conv2``, before
masking), ``mask`` (the masked spectrum that goes into the ISTFT) and ``output`` (the waveform).
Ours are caught inside the jitted forward pass (``capture_intermediates`` for the modules, wrappers
around ``spectral.stft``, ``spectral.magnitude_phase``, ``masks.apply_mask`` for the front end and
the mask: the same compiled program that ``model.apply`` is).

``--dtypes=float32/plain`` runs ours with the STFT as it was before issue 18 (one float32 rfft of the
windowed frames): the "before" column. ``--reuse`` keeps the reference runs of an earlier call with
the same ``--cache``, so variants (``--xla_flags``, ``--precision``, ``--dtypes``) cost a few minutes.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

import workers  # bench/workers.py: this script's folder is first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SAMPLE_RATE = 44100
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "parity")
WEIGHT_SEED = 1


def _stage_names(arch):
  sys.path.insert(0, REPO)
  from resunet_jax import models  # pylint: disable=g-import-not-at-top
  fields = models.ARCHITECTURES[arch]
  n = len(fields["channels"])
  names = ["stft", "mag", "phase", "bn0"] + [f"encoder_block{i + 1}" for i in range(n)]
  center = n + 1
  if fields["backbone"] == "mobilenet":
    names.append(f"conv_block{center}")
  else:
    names += [f"conv_block{center}{chr(ord('a') + i)}" for i in range(fields["center_blocks"])]
  names += [f"decoder_block{i + 1}" for i in range(n)]
  names += ["after_conv_block1", "head", "mask", "output"]
  return names


# ------------------------------------------------------------------------------------------------
# Input and weights.


def load_excerpt(audio, offset, seconds):
  """(mixture (1, L, 2) float32, vocals (L, 2) float32 or None)."""
  sys.path.insert(0, REPO)
  if audio == "stempeg":
    import stempeg  # pylint: disable=g-import-not-at-top
    from resunet_jax.data import stems_io  # pylint: disable=g-import-not-at-top
    stems = stems_io.read_stem_file(stempeg.example_stem_path(), parallel=False)
    mix = stems_io.int16_to_float(stems["mixture"])
    vocals = stems_io.int16_to_float(stems["vocals"])
  else:
    from resunet_jax import audio as audio_lib  # pylint: disable=g-import-not-at-top
    mix, rate = audio_lib.read_audio(audio)
    if rate != SAMPLE_RATE:
      mix = audio_lib.resample(mix, rate, SAMPLE_RATE)
    mix = np.asarray(mix, np.float32)
    if mix.ndim == 1 or mix.shape[1] == 1:
      mix = np.repeat(mix.reshape(-1, 1), 2, axis=1)
    vocals = None
  start = int(round(offset * SAMPLE_RATE))
  stop = len(mix) if seconds <= 0 else min(len(mix), start + int(round(seconds * SAMPLE_RATE)))
  if stop - start < SAMPLE_RATE // 10:
    raise SystemExit(f"--audio={audio}: only {stop - start} samples from --offset={offset}")
  mix = np.ascontiguousarray(mix[start:stop])[None]
  if vocals is not None:
    vocals = np.ascontiguousarray(vocals[start:stop])
  return mix.astype(np.float32), vocals


def _state_dict_keys(arch):
  """[(key, shape), ...] of bytesep's state dict for ``arch`` (from the parity fixture)."""
  with np.load(os.path.join(FIXTURE_DIR, f"{arch}.npz")) as f:
    meta = json.loads(str(f["meta"]))
  return [(k, tuple(s)) for k, s in meta["state_dict_keys"]]


def _from_flax(arch, path):
  """A bytesep state dict from one of our trained models (a model directory or a training work
  directory): ``resunet_jax.convert``'s mapping run backwards (layouts by transposing an index
  array the same way, InPlaceABN scales w = scale - 1e-5)."""
  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  model, variables, desc = checkpoint.load_model(path)
  if desc.get("arch") not in (None, arch):
    raise SystemExit(f"--weights={path} is a {desc.get('arch')} model, not {arch}")
  flat = {}
  for collection in ("params", "batch_stats"):
    for keys, value in convert._flatten(variables[collection]).items():  # pylint: disable=protected-access
      flat[(collection,) + keys] = np.asarray(value, np.float64)
  state = {}
  for key, shape in _state_dict_keys(arch):
    index = np.arange(int(np.prod(shape))).reshape(shape)
    target = convert.flax_variable(key, index, arch, abn_scale=False)
    if target is None:
      continue
    collection, where, moved = target
    value = flat[(collection,) + tuple(where)]
    out = np.empty(index.size)
    out[np.asarray(moved).reshape(-1)] = value.reshape(-1)
    out = out.reshape(shape)
    if key.endswith("abn2.weight"):
      out = out - convert.ABN_EPS  # |w| + 1e-5 = scale, taking w > 0
    state[key] = out.astype(np.float32)
  del model
  return state


def state_dict(arch, weights):
  """{torch key: float32 array} for ``--weights``: ``rule``, a bytesep .pth / .npz state dict, or
  one of our model / training work directories."""
  sys.path.insert(0, REPO)
  from resunet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  from resunet_jax.testing import bytesep_reference as ref  # pylint: disable=g-import-not-at-top
  if weights == "rule":
    state = ref.rule_state_dict(_state_dict_keys(arch), WEIGHT_SEED)
    if arch != "resunet143_ismir2021":
      state.update(ref.load_pqmf_kernels())
    return state
  if os.path.isdir(weights) and checkpoint.is_loadable(weights):
    state = _from_flax(arch, weights)
    if arch != "resunet143_ismir2021":
      state.update(ref.load_pqmf_kernels())
    return state
  state, _ = convert.read_state_dict(weights)
  return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
          for k, v in state.items()}


# ------------------------------------------------------------------------------------------------
# Workers: each writes {stage: array} to an .npz.


def _nchw_to_nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def worker_torch(args, dtype_name, out):
  sys.path.insert(0, REPO)
  import torch  # pylint: disable=g-import-not-at-top
  from resunet_jax.testing import bytesep_reference as ref  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
  mix, _ = load_excerpt(args.audio, args.offset, args.seconds)
  with ref.default_dtype(dtype):
    model = ref.make_model(args.arch)
  ref.load_numpy_state(model, state_dict(args.arch, args.weights))
  model.eval()
  stages = _stage_names(args.arch)
  got = {}
  batch = mix.shape[0]

  def keep(name, select=None, layout=_nchw_to_nhwc):
    def hook(module, inputs, output):
      del module, inputs
      value = output if select is None else output[select]
      got[name] = layout(value.detach().cpu().numpy())
    return hook

  handles = []
  for name in stages:
    if name.startswith(("encoder_block", "conv_block", "after_conv_block")):
      module = getattr(model, name)
      # bytesep's encoder blocks return (pooled, x); the MobileNet's centre block returns x.
      handles.append(module.register_forward_hook(
          lambda m, i, o, name=name: got.__setitem__(
              name, _nchw_to_nhwc((o[1] if isinstance(o, tuple) else o).detach().cpu().numpy()))))
    elif name.startswith("decoder_block"):
      handles.append(getattr(model, name).register_forward_hook(keep(name)))
  handles.append(model.after_conv2.register_forward_hook(keep("head")))
  # bn0 sees (B, F, T, C): to (B, T, F, C).
  handles.append(model.bn0.register_forward_hook(
      keep("bn0", layout=lambda a: np.transpose(a, (0, 2, 1, 3)))))

  def stft_hook(module, inputs, output):
    del module, inputs
    real, imag = (o.detach().cpu().numpy() for o in output)
    if "stft" not in got:  # the first call is the mixture's
      got["stft"] = np.stack([real, imag], -1).reshape((batch, -1) + real.shape[2:] + (2,))
  handles.append(model.stft.register_forward_hook(stft_hook))

  def istft_pre_hook(module, inputs):
    del module
    real, imag = (t.detach().cpu().numpy() for t in inputs[:2])
    got["mask"] = np.stack([real, imag], -1).reshape((batch, -1) + real.shape[2:] + (2,))
  handles.append(model.istft.register_forward_pre_hook(istft_pre_hook))

  original = model.wav_to_spectrogram_phase

  def spectrogram_phase(x, *a, **k):
    mag, cos, sin = original(x, *a, **k)
    if "mag" not in got:
      got["mag"] = mag.detach().cpu().numpy()
      got["phase"] = np.stack([cos.detach().cpu().numpy(), sin.detach().cpu().numpy()], -1)
    return mag, cos, sin
  model.wav_to_spectrogram_phase = spectrogram_phase

  start = time.time()
  with torch.no_grad():
    y = model({"waveform": torch.as_tensor(np.swapaxes(mix, 1, 2)).to(dtype)})["waveform"]
  seconds = time.time() - start
  for h in handles:
    h.remove()
  got["output"] = np.swapaxes(y.detach().cpu().numpy(), 1, 2)  # (B, L, S*C), one source
  _save(out, got, dtype_name)
  return {"seconds": seconds, "stages": sorted(got)}


def worker_calibrate(args, dtype_name, out):
  """``--bn_stats=input``: the weights with every BatchNorm's running statistics set to the
  statistics of this input (one train-mode pass of ours in float32 with momentum 1), written as a
  bytesep state dict. (The MobileNet's BNs have a fixed momentum of 0.1: only partly set.)"""
  del dtype_name
  sys.path.insert(0, REPO)
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_xla_cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  state = state_dict(args.arch, args.weights)
  model, variables = convert.from_bytesep(state, args.arch)
  mix, _ = load_excerpt(args.audio, args.offset, args.seconds)
  calibrating = model.clone(bn_momentum=1.0)
  _, updated = jax.jit(lambda v, x: calibrating.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, jnp.asarray(mix))
  stats = {("batch_stats",) + k: np.asarray(v, np.float64) for k, v in
           convert._flatten(updated["batch_stats"]).items()}  # pylint: disable=protected-access
  for key, shape in _state_dict_keys(args.arch):
    if key.endswith((".running_mean", ".running_var")):
      collection, where, _ = convert.flax_variable(key, np.zeros(shape), args.arch)
      state[key] = stats[(collection,) + tuple(where)].astype(np.float32)
  np.savez(out, **state)
  return {"seconds": 0.0}


def _save(out, got, dtype_name):
  keep = np.float64 if dtype_name == "float64" else np.float32
  np.savez(out, **{k: np.asarray(v, keep) for k, v in got.items()})


@contextlib.contextmanager
def _patched(module, name, wrapper):
  original = getattr(module, name)
  setattr(module, name, wrapper(original))
  try:
    yield
  finally:
    setattr(module, name, original)


def jax_capture_fn(model, stage_names):
  """A function (variables, x) -> (output, {stage: array}) to jit: ``model.apply`` with the stage
  outputs caught on the way (the same program as ``model.apply`` plus extra outputs)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import masks  # pylint: disable=g-import-not-at-top
  from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
  modules = {n for n in stage_names if n.startswith(("bn0", "encoder", "conv_block", "decoder",
                                                     "after_conv_block"))}

  def wants(mdl, method):
    return method == "__call__" and mdl.name in modules and len(mdl.scope.path) == 1

  def fn(variables, x):
    caught = {}

    def first(name, f):
      def wrapped(*a, **k):
        out = f(*a, **k)
        caught.setdefault(name, out)
        return out
      return wrapped

    with contextlib.ExitStack() as stack:
      stack.enter_context(_patched(spectral, "stft", lambda f: first("stft", f)))
      stack.enter_context(_patched(spectral, "magnitude_phase", lambda f: first("mag_phase", f)))
      stack.enter_context(_patched(masks, "apply_mask", lambda f: first("mask", f)))
      (y, head), state = model.apply(variables, x, return_head=True, capture_intermediates=wants,
                                     mutable=["intermediates"])
    got = {name: value["__call__"][0] for name, value in state["intermediates"].items()}
    spec = caught["stft"]
    got["stft"] = jnp.stack([jnp.real(spec), jnp.imag(spec)], -1)
    mag, cos, sin = caught["mag_phase"]
    got["mag"] = mag
    got["phase"] = jnp.stack([cos, sin], -1)
    got["head"] = head
    m = caught["mask"]  # (B, S, C, N, T, F+1)
    got["mask"] = jnp.stack([jnp.real(m), jnp.imag(m)], -1).reshape(
        (m.shape[0], -1) + m.shape[-2:] + (2,))
    got["output"] = y.reshape(y.shape[:1] + (y.shape[2], -1))  # (B, L, S*C)
    return got
  return fn


def plain_rfft_stft(x, n_fft, hop):
  """``spectral.stft`` as it was before issue 18: one float32 rfft of the windowed frames."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
  pad = n_fft // 2
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  window = jnp.asarray(spectral.hann_window(n_fft), dtype=x.dtype)
  return jnp.fft.rfft(spectral.frame(padded, n_fft, hop) * window, n=n_fft, axis=-1)


def worker_jax(args, dtype_name, out):
  sys.path.insert(0, REPO)
  dtype_name, *variants = dtype_name.split("/")
  if "plain" in variants:
    from resunet_jax import spectral  # pylint: disable=g-import-not-at-top
    spectral.stft = plain_rfft_stft
  from resunet_jax import runtime  # pylint: disable=g-import-not-at-top
  if dtype_name != "float64" and args.xla_flags == "default":
    runtime.set_xla_cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  if dtype_name == "float64":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  param_dtype = np.float64 if dtype_name == "float64" else np.float32
  compute = None if dtype_name in ("float32", "float64") else dtype_name
  mix, _ = load_excerpt(args.audio, args.offset, args.seconds)
  model, variables = _convert(args, param_dtype, compute)
  fn = jax.jit(jax_capture_fn(model, _stage_names(args.arch)))
  x = jnp.asarray(mix, param_dtype)
  start = time.time()
  compiled = fn.lower(variables, x).compile()
  compile_s = time.time() - start
  start = time.time()
  got = jax.device_get(compiled(variables, x))
  seconds = time.time() - start
  _save(out, got, "float64" if dtype_name == "float64" else "float32")
  return {"seconds": seconds, "compile_s": compile_s, "stages": sorted(got)}


def _convert(args, param_dtype, compute):
  from resunet_jax import convert  # pylint: disable=g-import-not-at-top
  # from_bytesep's ``dtype`` is the variables' dtype; the compute dtype is the model's field.
  model, variables = convert.from_bytesep(state_dict(args.arch, args.weights), args.arch,
                                          dtype=param_dtype)
  if compute is not None:
    model = model.clone(dtype=compute)
  if args.precision:
    model = model.clone(precision=args.precision)
  return model, variables


# ------------------------------------------------------------------------------------------------
# Comparison.


def rel_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def vocals_sdr(estimate, vocals):
  """SDR in dB of an (L, 2) estimate against the true vocals stem: the median over 1 s windows of
  10 log10(sum s^2 / sum (s_hat - s)^2), both channels (``training.sdr.segment_sdr``'s formula,
  museval's v4 SDR; restated in numpy so that this process does not start JAX)."""
  length = min(len(estimate), len(vocals))
  values = []
  for start in range(0, length - SAMPLE_RATE + 1, SAMPLE_RATE):
    s = np.asarray(vocals[start:start + SAMPLE_RATE], np.float64)
    e = np.asarray(estimate[start:start + SAMPLE_RATE], np.float64)
    if np.sum(s * s) > 0 and np.sum(e * e) > 0:
      values.append(10 * np.log10(np.sum(s * s) / np.sum((e - s) ** 2)))
  return float(np.median(values)) if values else float("nan")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="resunet143_ismir2021")
  parser.add_argument("--audio", default="stempeg", help="'stempeg' or an audio file")
  parser.add_argument("--offset", type=float, default=0.0, help="start, seconds")
  parser.add_argument("--seconds", type=float, default=0.0, help="length, seconds (0: to the end)")
  parser.add_argument("--weights", default="rule",
                      help="'rule', a bytesep .pth/.npz state dict, or one of our model/work "
                      "directories")
  parser.add_argument("--bn_stats", choices=("weights", "input"), default="weights",
                      help="BatchNorm running statistics: the weights' own, or those of the input "
                      "(one train-mode pass with momentum 1)")
  parser.add_argument("--dtypes", default="float32,bfloat16",
                      help="our compute dtypes to compare (float64 is always run); DTYPE/plain: "
                      "with the plain float32 rfft STFT of before issue 18")
  parser.add_argument("--no_torch32", action="store_true", help="skip bytesep's float32 run")
  parser.add_argument("--xla_flags", choices=("default", "none"), default="default")
  parser.add_argument("--cache", default=None, help="folder for the stage arrays (default: temp)")
  parser.add_argument("--reuse", action="store_true",
                      help="reuse the float64 and bytesep arrays already in --cache (same input, "
                      "weights and float64 code)")
  parser.add_argument("--precision", default=None,
                      help="our models' precision field (convolutions, matmuls): default/highest")
  parser.add_argument("--json", default=None, help="also write the table here")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker_dtype", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    try:
      fn = {"torch": worker_torch, "jax": worker_jax, "calibrate": worker_calibrate}[args.worker]
      result = fn(args, args.worker_dtype, args.worker_out)
    except Exception as e:  # pylint: disable=broad-except
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      result = {"error": f"{type(e).__name__}: {e}"}
    workers.report(result)
    return 0

  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  cache = args.cache or tempfile.mkdtemp(prefix="bench_precision_")
  os.makedirs(cache, exist_ok=True)
  try:
    return _compare(args, cache)
  finally:
    if args.cache is None:
      shutil.rmtree(cache, ignore_errors=True)


def _compare(args, cache):
  """Runs the models (or reuses their arrays in ``cache``) and prints the table."""
  weights = args.weights
  if args.bn_stats == "input":
    weights = os.path.join(cache, "weights_bn_stats_of_input.npz")
    if not (args.reuse and os.path.isfile(weights)):
      result = workers.run(__file__, ["--arch", args.arch, "--audio", args.audio, "--offset",
                                      str(args.offset), "--seconds", str(args.seconds),
                                      "--weights", args.weights, "--worker", "calibrate",
                                      "--worker_out", weights])
      if "error" in result:
        raise SystemExit(f"recalibrating the BatchNorm statistics failed: {result['error']}")
  common = ["--arch", args.arch, "--audio", args.audio, "--offset", str(args.offset),
            "--seconds", str(args.seconds), "--weights", weights,
            "--xla_flags", args.xla_flags] + (
                ["--precision", args.precision] if args.precision else [])
  runs = [("torch", "float64")]
  if not args.no_torch32:
    runs.append(("torch", "float32"))
  runs.append(("jax", "float64"))
  runs += [("jax", d) for d in args.dtypes.split(",") if d]
  arrays = {}
  # Our non-default settings name our float32 / bfloat16 runs (they share the reference runs).
  tag = ("/noflags" if args.xla_flags == "none" else "") + (
      f"/{args.precision}" if args.precision else "")
  for kind, dtype in runs:
    if kind == "jax" and dtype != "float64":
      dtype = dtype + tag
    label = f"{'bytesep' if kind == 'torch' else 'ours'} {dtype}"
    out = os.path.join(cache, f"{kind}_{dtype.replace('/', '_')}.npz")
    if not (args.reuse and (kind == "torch" or dtype == "float64") and os.path.isfile(out)):
      env = None
      if kind == "jax" and dtype == "float64":
        env = {"RESUNET_XLA_DEFAULTS": "0", "JAX_ENABLE_X64": "1"}
      result = workers.run(__file__, common + ["--worker", kind, "--worker_dtype", dtype,
                                               "--worker_out", out], env=env)
      if "error" in result:
        print(f"{label}: failed: {result['error']}")
        continue
      print(f"# {label}: {result['seconds']:.1f} s" +
            (f" (compile {result['compile_s']:.0f} s)" if "compile_s" in result else ""),
            flush=True)
    arrays[label] = np.load(out)
  ref_label = "bytesep float64"
  reference = arrays[ref_label]
  labels = [l for l in arrays if l != ref_label]
  _, vocals = load_excerpt(args.audio, args.offset, args.seconds)
  print(f"# {args.arch}, weights {args.weights} (BatchNorm statistics of the {args.bn_stats}), "
        f"{args.audio} from {args.offset:g} s, "
        f"{reference['output'].shape[1] / SAMPLE_RATE:.2f} s; XLA flags: {args.xla_flags}; "
        f"precision: {args.precision}; relative L2 against bytesep float64")
  print(f"{'stage':20s} {'shape':>22s} " + " ".join(f"{l:>16s}" for l in labels))
  table = {}
  for stage in _stage_names(args.arch):
    if stage not in reference.files:
      continue
    row = {}
    for label in labels:
      if stage in arrays[label].files:
        a, b = arrays[label][stage], reference[stage]
        row[label] = rel_l2(a, b) if a.shape == b.shape else float("nan")
    table[stage] = row
    print(f"{stage:20s} {str(reference[stage].shape):>22s} " +
          " ".join(f"{row.get(l, float('nan')):16.2e}" for l in labels))
  if vocals is not None:
    sdr = {l: vocals_sdr(arrays[l]["output"][0], vocals) for l in [ref_label] + labels}
    print(f"{'vocals SDR, dB':20s} {'':>22s} " + " ".join(f"{sdr[l]:16.4f}" for l in labels) +
          f"   (bytesep float64: {sdr[ref_label]:.4f})")
    table["vocals_sdr_db"] = sdr
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "table": table}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
