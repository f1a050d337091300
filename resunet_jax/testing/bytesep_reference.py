"""The authors' PyTorch models (PyPI ``bytesep`` 0.1.1), built on this machine as references.

Used by the parity tests, ``scripts/make_parity_fixtures.py`` and the benchmarks. Install (what
``scripts/setup.sh`` does):

    pip install torch torchlibrosa==0.1.0 librosa     # torchlibrosa 0.0.9 breaks with librosa >= 0.9
    pip install --no-deps bytesep==0.1.1               # its 2021 pins (torch 1.7.1, ...) do not resolve

bytesep then still imports two packages it does not need for a forward/backward pass; where they are
missing ``install_stand_ins`` puts small stand-ins into ``sys.modules``:

* ``pytorch_lightning.LightningModule`` = ``torch.nn.Module`` (only bytesep's trainer wrapper uses
  Lightning);
* ``inplace_abn.abn.InPlaceABNSync`` (the paper model's activated BatchNorm, a CUDA/C++ build):
  BatchNorm with scale |w| + eps followed by leaky ReLU, which is what InPlaceABN computes
  (REFERENCE §4.8), differentiable through autograd (the real layer works in place and corrects the
  sign of the scale's gradient by hand; its arithmetic is the same). Training mode updates the
  running statistics like ``nn.BatchNorm2d`` (unbiased variance), as InPlaceABN does.

The subband models read the authors' PQMF filters from ``~/bytesep_data/filters/{f,h}_4_64.mat``
when they are built (and would ``wget`` them otherwise). This repository does not carry those files;
every released subband checkpoint carries the conv kernels derived from them (the frozen
``pqmf.ana_conv_filter.weight`` and ``pqmf.syn_conv_filter.weight``), and so does
``tests/fixtures/parity/pqmf_frozen.npz``. ``bytesep_home`` writes the two ``.mat`` files back from
those kernels into a temporary HOME (``pqmf.filters_from_kernels``): bytesep rounds the filters to
float32 and divides by 4, so the model it builds holds kernels bit-identical to the ones the files
were made from (checked by the parity tests).
"""
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import types
from typing import Optional

import numpy as np

from resunet_jax import pqmf as pqmf_lib

PQMF_KEYS = ("pqmf.ana_conv_filter.weight", "pqmf.syn_conv_filter.weight")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The frozen PQMF kernels that ship with the parity fixtures (a checkout, not an installed wheel).
IN_REPO_PQMF_KERNELS = os.path.join(_REPO_ROOT, "tests", "fixtures", "parity", "pqmf_frozen.npz")

CLASSES = {
    "resunet143_ismir2021": ("bytesep.models.resunet_ismir2021",
                             "ResUNet143_DecouplePlusInplaceABN_ISMIR2021"),
    "resunet143_subbandtime": ("bytesep.models.resunet_subbandtime", "ResUNet143_Subbandtime"),
    "mobilenet_subbandtime": ("bytesep.models.mobilenet_subbandtime", "MobileNet_Subbandtime"),
}

STAND_INS = []  # names of the packages replaced by stand-ins in this process


def install_stand_ins():
  """Stand-ins for ``pytorch_lightning`` and ``inplace_abn`` where they are not installed."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  try:
    import pytorch_lightning  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = torch.nn.Module
    sys.modules["pytorch_lightning"] = pl
    STAND_INS.append("pytorch_lightning")

  try:
    import inplace_abn  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:

    class InPlaceABNSync(torch.nn.Module):
      """BN (scale |w| + eps, PyTorch running statistics) followed by leaky ReLU."""

      def __init__(self, num_features, eps=1e-5, momentum=0.1, activation="leaky_relu",
                   activation_param=0.01, **unused):
        super().__init__()
        if activation != "leaky_relu":
          raise ValueError(f"the InPlaceABN stand-in has no activation {activation!r}")
        self.eps, self.momentum, self.slope = eps, momentum, activation_param
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

      def forward(self, x):
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight.abs() + self.eps,
                         self.bias, self.training, self.momentum, self.eps)
        return F.leaky_relu(y, self.slope)

    pkg = types.ModuleType("inplace_abn")
    abn = types.ModuleType("inplace_abn.abn")
    abn.InPlaceABNSync = InPlaceABNSync
    pkg.abn = abn
    pkg.InPlaceABNSync = InPlaceABNSync
    sys.modules["inplace_abn"] = pkg
    sys.modules["inplace_abn.abn"] = abn
    STAND_INS.append("inplace_abn")


def available() -> Optional[str]:
  """Why the bytesep models cannot be built here, or None when they can."""
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import torchlibrosa  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return f"{e.name} is not installed (bash scripts/setup.sh installs the bytesep reference)"
  install_stand_ins()
  try:
    for module_name, _ in CLASSES.values():
      importlib.import_module(module_name)
  except ImportError as e:
    return f"bytesep does not import ({e}); bash scripts/setup.sh installs it"
  return None


def versions():
  """Versions of the reference stack, for fixture metadata."""
  out = {}
  for name in ("torch", "torchlibrosa", "librosa", "numpy", "scipy", "bytesep"):
    try:
      from importlib import metadata  # pylint: disable=g-import-not-at-top
      out[name] = metadata.version(name)
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  out["stand_ins"] = list(STAND_INS)
  return out


# ------------------------------------------------------------------------------------------------
# PQMF filter files from the frozen kernels.


def load_pqmf_kernels(source=None):
  """{``pqmf.ana_conv_filter.weight``: (4, 1, 64), ``pqmf.syn_conv_filter.weight``: (4, 4, 16)}.

  ``source``: an ``.npz`` file or a bytesep ``.pth`` checkpoint holding the two tensors, a mapping
  with them, or None for the copy in this checkout (``IN_REPO_PQMF_KERNELS``).
  """
  if source is None:
    source = IN_REPO_PQMF_KERNELS
    if not os.path.isfile(source):
      raise FileNotFoundError(
          f"{source} is absent (it ships with the repository's parity fixtures); pass the PQMF "
          "kernels of a released subband checkpoint instead")
  if isinstance(source, (str, os.PathLike)):
    from resunet_jax import convert  # pylint: disable=g-import-not-at-top
    state, _ = convert.read_state_dict(source)
  else:
    state = source
  missing = [k for k in PQMF_KEYS if k not in state]
  if missing:
    raise KeyError(f"{source}: no {missing}")
  out = {}
  for key in PQMF_KEYS:
    value = state[key]
    if hasattr(value, "detach"):
      value = value.detach().cpu().numpy()
    out[key] = np.asarray(value, np.float32)
  return out


def write_pqmf_mat_files(directory, kernels=None):
  """Writes ``f_4_64.mat`` (variable ``f``) and ``h_4_64.mat`` (``h``) into ``directory``.

  The float64 filters are exact multiples of the float32 kernels (``pqmf.filters_from_kernels``
  only reorders and scales by 4), so bytesep's float32 rounding gives the kernels back bit for bit.
  """
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  kernels = load_pqmf_kernels(kernels)
  ana, syn = pqmf_lib.filters_from_kernels(kernels[PQMF_KEYS[0]], kernels[PQMF_KEYS[1]])
  os.makedirs(directory, exist_ok=True)
  paths = []
  for name, var, value in (("f_4_64.mat", "f", ana), ("h_4_64.mat", "h", syn)):
    path = os.path.join(directory, name)
    sio.savemat(path, {var: np.asarray(value, np.float64)})
    paths.append(path)
  return tuple(paths)


@contextlib.contextmanager
def bytesep_home(kernels=None, pqmf_dir=None):
  """A temporary HOME whose ``bytesep_data/filters`` holds the PQMF filter files.

  From ``pqmf_dir`` (a folder with the authors' ``f_4_64.mat`` and ``h_4_64.mat``) when given,
  else written from ``kernels`` (see ``load_pqmf_kernels``). HOME is restored and the folder
  removed on exit.
  """
  home = tempfile.mkdtemp(prefix="bytesep_home_")
  filters = os.path.join(home, "bytesep_data", "filters")
  old_home = os.environ.get("HOME")
  try:
    if pqmf_dir is not None:
      os.makedirs(filters)
      for name in ("f_4_64.mat", "h_4_64.mat"):
        shutil.copyfile(os.path.join(pqmf_dir, name), os.path.join(filters, name))
    else:
      write_pqmf_mat_files(filters, kernels)
    os.environ["HOME"] = home
    yield home
  finally:
    if old_home is None:
      os.environ.pop("HOME", None)
    else:
      os.environ["HOME"] = old_home
    shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def default_dtype(dtype):
  """``torch.set_default_dtype(dtype)`` inside the block (torchlibrosa builds its DFT bases with
  ``torch.Tensor(...)``, i.e. in the default dtype: a float64 reference must be built in it)."""
  import torch  # pylint: disable=g-import-not-at-top
  previous = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    yield
  finally:
    torch.set_default_dtype(previous)


# ------------------------------------------------------------------------------------------------
# Known weights.

WEIGHT_RULE = """\
rng = numpy.random.default_rng(seed). Walk model.state_dict() in its own order (meta["state_dict_keys"]).
Skip keys whose last part is num_batches_tracked and keys under stft., istft., pqmf.
(they are fixed by the configuration). For each remaining key, draw in float64 and cast to float32:
  *.running_mean           -> rng.uniform(-0.1, 0.1, shape)
  *.running_var            -> rng.uniform(0.5, 1.5, shape)
  1-D *.weight             -> rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
  1-D *.bias               -> rng.uniform(-0.1, 0.1, shape)
  N-D *.weight (N >= 2)    -> rng.standard_normal(shape) * GAIN / sqrt(prod(shape[1:]))
GAIN = 1.0, except keys starting with after_conv2. where GAIN = 0.1.
For a 1-D weight the uniform draw comes first, then the sign draw, both of the key's full shape.
"""


def rule_state_dict(keys_and_shapes, seed):
  """The parity fixtures' weights (``WEIGHT_RULE``): {key: float32 array} for every trainable
  tensor and BN statistic of a state dict given as [(key, shape), ...] in torch's order.

  Negative BN scales are deliberate: the paper model's InPlaceABN layers scale by |w| + 1e-5, and a
  converter that forgets the absolute value fails on these weights.
  """
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in keys_and_shapes:
    shape = tuple(int(n) for n in shape)
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked" or key.startswith(("stft.", "istft.", "pqmf.")):
      continue
    if last == "running_mean":
      value = rng.uniform(-0.1, 0.1, shape)
    elif last == "running_var":
      value = rng.uniform(0.5, 1.5, shape)
    elif last == "weight" and len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
      value = value * rng.choice([-1.0, 1.0], shape)
    elif last == "bias" and len(shape) == 1:
      value = rng.uniform(-0.1, 0.1, shape)
    elif last == "weight":
      gain = 0.1 if key.startswith("after_conv2.") else 1.0
      value = rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
    else:
      raise ValueError(f"the weight rule has no case for {key} {shape}")
    state[key] = value.astype(np.float32)
  return state


def state_dict_keys(model):
  """[(key, shape), ...] of a torch model's state dict, in its order."""
  return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


# ------------------------------------------------------------------------------------------------
# Models.


def _has_mat_files(pqmf_dir):
  return pqmf_dir is not None and all(
      os.path.isfile(os.path.join(pqmf_dir, f)) for f in ("f_4_64.mat", "h_4_64.mat"))


def make_model(arch, pqmf_dir=None, *, pqmf_kernels=None, channels=2, sources=1):
  """A bytesep model of ``arch`` (bytesep's own initial weights), or RuntimeError saying why not.

  Its parameters take torch's default dtype (see ``default_dtype``). Subband models get their
  PQMF filters from ``pqmf_dir`` when it holds the two ``.mat`` files, else from ``pqmf_kernels``
  (default: the kernels of this checkout's parity fixtures).
  """
  reason = available()
  if reason:
    raise RuntimeError(reason)
  module_name, class_name = CLASSES[arch]
  cls = getattr(importlib.import_module(module_name), class_name)
  if arch == "resunet143_ismir2021":
    return cls(input_channels=channels, target_sources_num=sources)
  with bytesep_home(pqmf_kernels, pqmf_dir if _has_mat_files(pqmf_dir) else None):
    return cls(input_channels=channels, output_channels=channels, target_sources_num=sources)


def load_numpy_state(model, state):
  """Loads the tensors of ``state`` ({key: array}) into ``model`` in the model's dtypes.

  Keys of the model absent from ``state`` keep their values (the frozen STFT/PQMF tensors, the
  ``num_batches_tracked`` counters); a key of ``state`` the model lacks, or a wrong shape, raises.
  """
  import torch  # pylint: disable=g-import-not-at-top
  own = model.state_dict()
  unknown = [k for k in state if k not in own]
  if unknown:
    raise KeyError(f"keys not in the {type(model).__name__} state dict: {unknown[:10]}")
  with torch.no_grad():
    for key, value in state.items():
      target = own[key]
      value = torch.as_tensor(np.asarray(value))
      if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"{key}: shape {tuple(value.shape)}, the model has {tuple(target.shape)}")
      target.copy_(value.to(target.dtype))


def state_dict_numpy(model):
  """The model's state dict as {key: numpy array} (ordered as torch orders it)."""
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def forward(model, waveform, *, head=False):
  """Eval-mode forward of (B, C, L) ``waveform`` in the model's dtype, without gradients.

  Returns the output (B, S*C, L) as numpy, and with ``head`` also the head conv's output
  (``after_conv2``: (B, S*C*K[*N], T_pad, F), NCHW) captured by a forward hook.
  """
  import torch  # pylint: disable=g-import-not-at-top
  dtype = next(model.parameters()).dtype
  captured = {}

  def keep_head(module, inputs, output):  # returns None: the output passes on unchanged
    del module, inputs
    captured["head"] = output.detach().cpu().numpy()

  handle = model.after_conv2.register_forward_hook(keep_head)
  try:
    model.eval()
    with torch.no_grad():
      y = model({"waveform": torch.as_tensor(np.asarray(waveform)).to(dtype)})["waveform"]
  finally:
    handle.remove()
  y = y.detach().cpu().numpy()
  return (y, captured["head"]) if head else y
