"""Reference tooling for tests, benchmarks and scripts (not needed to train or separate).

``bytesep_reference``: builds the authors' PyTorch models (PyPI ``bytesep``) on this machine, with
stand-ins for the packages they import but do not use and the PQMF filter files they read.
"""
