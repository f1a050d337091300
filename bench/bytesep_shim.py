"""The authors' PyTorch models for the benchmarks: a re-export of
``resunet_jax.testing.bytesep_reference`` (stand-ins for ``pytorch_lightning`` and ``inplace_abn``,
PQMF filter files written from the frozen kernels of tests/fixtures/parity, so ../shared is not
needed; a ``pqmf_dir`` holding the authors' .mat files is still used when given)."""
from resunet_jax.testing.bytesep_reference import (  # noqa: F401
    CLASSES, STAND_INS, available, install_stand_ins, make_model)
