"""Imports the authors' PyTorch models (PyPI ``bytesep``) for side-by-side benchmarks.

bytesep 0.1.1 installs only with ``pip install --no-deps bytesep`` and then still imports two
packages it does not need for a forward/backward pass: ``pytorch_lightning`` (only its trainer
wrapper uses it) and ``inplace_abn`` (the paper model's activated BatchNorm, a CUDA/C++ build).
When they are missing this module puts small stand-ins in ``sys.modules``:

* ``pytorch_lightning.LightningModule`` = ``torch.nn.Module`` (never used by the models);
* ``inplace_abn.abn.InPlaceABNSync``: BatchNorm with scale |w| + eps followed by leaky ReLU, which
  is what InPlaceABN computes (REFERENCE §4.8), differentiable through autograd (the real one
  saves memory by working in place; its arithmetic is the same).

The subband models read the PQMF filters from ``~/bytesep_data/filters`` and would ``wget`` them
otherwise; ``make_model`` points HOME at a temporary directory holding links to the authors' filters
from ../shared/data/pqmf (which this repository does not redistribute).
"""
import os
import sys
import tempfile
import types

STAND_INS = []


def _install_stand_ins():
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

      def __init__(self, num_features, eps=1e-5, momentum=0.1, activation="leaky_relu",
                   activation_param=0.01, **unused):
        super().__init__()
        assert activation == "leaky_relu"
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


def available():
  """Why bytesep cannot be benchmarked, or None when it can."""
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import torchlibrosa  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return f"{e.name} is not installed"
  _install_stand_ins()
  try:
    import bytesep.models.resunet_subbandtime  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return f"bytesep does not import ({e})"
  return None


CLASSES = {
    "resunet143_ismir2021": ("bytesep.models.resunet_ismir2021",
                             "ResUNet143_DecouplePlusInplaceABN_ISMIR2021"),
    "resunet143_subbandtime": ("bytesep.models.resunet_subbandtime", "ResUNet143_Subbandtime"),
    "mobilenet_subbandtime": ("bytesep.models.mobilenet_subbandtime", "MobileNet_Subbandtime"),
}


def make_model(arch, pqmf_dir=None, channels=2, sources=1):
  """A bytesep model of ``arch`` (random weights), or raises RuntimeError saying why not."""
  import importlib  # pylint: disable=g-import-not-at-top
  reason = available()
  if reason:
    raise RuntimeError(reason)
  module_name, class_name = CLASSES[arch]
  cls = getattr(importlib.import_module(module_name), class_name)
  if arch == "resunet143_ismir2021":
    return cls(input_channels=channels, target_sources_num=sources)
  if pqmf_dir is None or not all(
      os.path.isfile(os.path.join(pqmf_dir, f)) for f in ("f_4_64.mat", "h_4_64.mat")):
    raise RuntimeError("the subband models need the authors' PQMF filters (../shared/data/pqmf)")
  home = tempfile.mkdtemp(prefix="bytesep_home_")
  filters = os.path.join(home, "bytesep_data", "filters")
  os.makedirs(filters)
  for name in ("f_4_64.mat", "h_4_64.mat"):
    os.symlink(os.path.abspath(os.path.join(pqmf_dir, name)), os.path.join(filters, name))
  old_home = os.environ.get("HOME")
  os.environ["HOME"] = home
  try:
    return cls(input_channels=channels, output_channels=channels, target_sources_num=sources)
  finally:
    if old_home is not None:
      os.environ["HOME"] = old_home
