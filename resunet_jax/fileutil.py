"""Atomic writes with ordinary permissions; locations that may be URLs (gs://...).

``tempfile.mkstemp``/``mkdtemp`` create private files (0600) and directories (0700); renamed into
place they would leave a user's outputs -- separated audio, converted models, evaluation results --
unreadable to everyone else. Everything written atomically here ends up with the permissions a
plain ``open()``/``mkdir()`` would give under the process's umask.
"""
import contextlib
import os
import tempfile


def _umask() -> int:
  mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
  os.umask(mask)
  return mask


def make_public(path: str, directory: bool = False) -> None:
  """Gives ``path`` the mode ``open()`` (0666) or ``mkdir()`` (0777) would under the umask."""
  os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def temp_dir(parent: str, prefix: str) -> str:
  """A new directory in ``parent`` to fill and rename into place, with ordinary permissions."""
  path = tempfile.mkdtemp(prefix=prefix, dir=parent)
  make_public(path, directory=True)
  return path


def temp_file(path: str, tag: str = "tmp") -> str:
  """A new empty file next to ``path`` (``.<name>.<tag>-XXXX``), with ordinary permissions."""
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{tag}-",
                             dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  make_public(tmp)
  return tmp


@contextlib.contextmanager
def atomic_text_file(path: str, newline=None):
  """``with atomic_text_file(p) as f: f.write(...)``: ``p`` appears complete or not at all
  (replacing an existing file); the parent directory is created when missing."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temp_file(path)
  try:
    with open(tmp, "w", newline=newline) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ------------------------------------------------------------------------------------------------
# Locations that may be URLs (gs://, s3://, ...) as well as local paths.

URL_MARK = "://"


def is_url(location) -> bool:
  """True for ``gs://bucket/x``, ``s3://...`` and other URL-style locations."""
  return URL_MARK in str(location)


# URL schemes every location of this library works with. A location is read and written by Orbax
# (checkpoints, model directories: arrays through TensorStore), TensorFlow's file systems
# (TensorBoard event files, TFDS data) and etils.epath (JSON, the XLA cache); with the versions this
# package is tested with (orbax-checkpoint 0.12, TF 2.21) only Google Cloud Storage works for all
# of them. Orbax needs ``google-cloud-storage`` for gs:// (``pip install 'resunet_jax[gcs]'``).
SUPPORTED_SCHEMES = ("gs",)
_UNSUPPORTED = {
    "s3": "Orbax computes a wrong TensorStore spec for s3:// checkpoints ('Checkpoint path should "
          "be absolute') and TensorFlow has no s3 file system (TensorBoard files, TFDS)",
}


def url_scheme(location):
  """``"gs"`` for ``gs://bucket/x``; None for a local path."""
  text = str(location)
  return text.split(URL_MARK, 1)[0].lower() if is_url(text) else None


def check_location(location, what: str, local_only: str = "") -> None:
  """Raises ValueError naming ``what`` (a flag or config key) when ``location`` is a URL that
  cannot work: any URL when ``local_only`` (the reason) is given, else a scheme other than
  ``SUPPORTED_SCHEMES``. Empty and local locations pass."""
  if not location or not is_url(location):
    return
  scheme = url_scheme(location)
  if local_only:
    raise ValueError(f"{what}={location}: must be a local path: {local_only}")
  if scheme not in SUPPORTED_SCHEMES:
    why = _UNSUPPORTED.get(scheme, "not a storage scheme this library is tested with")
    raise ValueError(f"{what}={location}: {scheme}:// URLs cannot be used: {why}. Use a local "
                     f"path or a {' / '.join(s + '://' for s in SUPPORTED_SCHEMES)} URL.")


def as_path(location):
  """``location`` as an ``etils.epath.Path``: URLs as they are, local paths made absolute (with
  ``~`` expanded) -- never ``os.path.abspath`` on a URL, which would turn ``gs://b/run`` into
  ``./gs:/b/run``."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  text = os.fspath(location)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def join(location, *parts) -> str:
  """``os.path.join`` for a local path, ``location/part/...`` for a URL (a str either way)."""
  if is_url(location):
    return str(as_path(location).joinpath(*parts))
  return os.path.join(os.fspath(location), *parts)


def write_text_atomic(location, text: str) -> None:
  """Writes ``text`` to a local path (temporary file + rename) or a URL (object stores replace a
  whole object at once: a reader sees the old or the new object, never a part)."""
  path = as_path(location)
  if is_url(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return
  with atomic_text_file(os.fspath(path)) as f:
    f.write(text)


@contextlib.contextmanager
def file_lock(lock_path: str):
  """An exclusive lock between processes on one machine (``fcntl.flock`` on ``lock_path``,
  created if needed): for work that several processes sharing a local disk must do only once
  (a TFDS build, the built-in data set, a segment cache). Local paths only."""
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
  with open(lock_path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
