"""The command-line programs: flags or arguments, then a call into the library.

  train     ``train.py`` / ``resunet-train``: training (``resunet_jax.training.loop``)
  evaluate  ``eval.py`` / ``resunet-eval``: museval on a MUSDB18 split (``resunet_jax.evaluation``)
  separate  ``python -m resunet_jax.separate`` / ``resunet-separate``: audio files in, stems out

``resunet-convert`` (``resunet_jax.convert``), ``resunet-compare`` (``resunet_jax.compare``) and
``resunet-build-data`` (``resunet_jax.data.build``) keep their ``main`` next to what they run.
"""
