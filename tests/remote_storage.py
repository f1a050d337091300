"""Remote storage for tests: gs:// served by a local emulator, and nothing but loopback contacted.

Three things a test of ``gs://`` locations needs:

* ``set_safety_env()`` (conftest calls it before anything imports google-auth or TensorFlow):
  no credential search, no metadata server, a fixed fake token. google-auth reads ``NO_GCE_CHECK``
  and ``GCE_METADATA_*`` at import time, TensorFlow reads ``GCS_*`` when its GCS file system is
  first used. Only Google-client variables are touched, so other tests are not affected (a test
  that reached for Google Cloud by mistake fails at once instead of looking for credentials).
* ``gcs_server()``: ``gcp-storage-emulator`` in a child process on 127.0.0.1, and the environment
  that points every client at it: google-cloud-storage (``STORAGE_EMULATOR_HOST``; Orbax's bucket
  lookups), TensorStore (``TENSORSTORE_GCS_HTTP_URL``; Orbax's arrays) and TensorFlow's GCS file
  system (etils.epath, TensorBoard event files, TFDS). TensorFlow has no endpoint setting: its
  libcurl goes through ``https_proxy``, a loopback proxy in the same child that terminates TLS for
  the Google storage hosts with a certificate of a throw-away CA (``CURL_CA_BUNDLE``) and hands the
  requests to the emulator; it refuses every other host and reports them (``refused``). The
  servers run in a child process because TensorFlow holds the GIL while it uploads (an emulator
  thread in the test process would never answer).
* ``NetGuard``: refuses and records every Python-level connect or name lookup of a non-loopback
  address (``socket.connect``, ``connect_ex``, ``getaddrinfo``). C++ clients (TensorFlow's and
  TensorStore's curl) bypass it; they are kept local by the variables above (the emulator's
  address, the proxy, a dead metadata address) and the proxy's refusals. ``guarded_python()``
  runs a child Python under the same guard.

Run as a script, this file is that child: ``python remote_storage.py --bucket B --cert-dir D``
prints one JSON line ({"endpoint", "proxy", "ca"}) when ready, serves until its stdin closes,
then prints {"refused": [...]}.
"""
import atexit
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import re
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Where a closed loopback port stands in for the metadata server (lookups fail at once).
DEAD_ADDRESS = "127.0.0.1:1"
GCS_HOSTS = ("storage.googleapis.com", "www.googleapis.com")


def safety_env(config_dir: str) -> dict:
  """Variables that keep Google clients away from credentials and metadata servers ("" = unset)."""
  return {
      "NO_GCE_CHECK": "true",                         # google-auth: not on GCE, no probe
      "GCE_METADATA_HOST": DEAD_ADDRESS,              # google-auth, TensorFlow
      "GCE_METADATA_IP": DEAD_ADDRESS,                # google-auth
      "GCE_METADATA_ROOT": DEAD_ADDRESS,              # TensorStore
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TensorFlow, TensorStore: no OAuth flow
      "GOOGLE_APPLICATION_CREDENTIALS": "",           # no user's key file
      "CLOUDSDK_CONFIG": config_dir,                  # no user's gcloud credentials
      "GOOGLE_CLOUD_PROJECT": "test-project",         # google-cloud-storage: no project lookup
      "GCS_STAT_CACHE_MAX_AGE": "0",                  # TensorFlow: see new objects at once
  }


def _apply(values: dict) -> dict:
  """Sets (or, for "", removes) variables; returns the previous values (None = was unset)."""
  previous = {k: os.environ.get(k) for k in values}
  for k, v in values.items():
    if v:
      os.environ[k] = v
    else:
      os.environ.pop(k, None)
  return previous


def _restore(previous: dict) -> None:
  for k, v in previous.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def set_safety_env() -> None:
  config_dir = tempfile.mkdtemp(prefix="no-gcloud-config-")  # empty: no gcloud credentials
  atexit.register(shutil.rmtree, config_dir, ignore_errors=True)
  _apply(safety_env(config_dir))


# ------------------------------------------------------------------------------------------------
# The network guard.


def _is_loopback(host) -> bool:
  if host is None:
    return True
  host = host.decode() if isinstance(host, bytes) else str(host)
  if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
    return True
  try:
    return ipaddress.ip_address(host.split("%")[0]).is_loopback
  except ValueError:
    return False


class NetGuard:
  """While installed, Python-level connects and name lookups of non-loopback addresses raise
  (``ConnectionRefusedError`` / ``socket.gaierror``) and are appended to ``attempts``."""

  def __init__(self):
    self.attempts = []
    self._saved = None

  def _refuse(self, what, target, error):
    self.attempts.append(f"{what} {target!r}")
    raise error(f"network guard: {what} to {target!r} refused (tests stay on loopback)")

  def install(self):
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_gethostbyname = socket.getaddrinfo, socket.gethostbyname
    guard = self

    def check(sock, address):
      if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        guard._refuse("connect", address, ConnectionRefusedError)

    def connect(sock, address):
      check(sock, address)
      return real_connect(sock, address)

    def connect_ex(sock, address):
      check(sock, address)
      return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
      if not _is_loopback(host):
        guard._refuse("getaddrinfo", host, lambda m: socket.gaierror(socket.EAI_NONAME, m))
      return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
      if not _is_loopback(host):
        guard._refuse("gethostbyname", host, lambda m: socket.gaierror(socket.EAI_NONAME, m))
      return real_gethostbyname(host)

    self._saved = (real_connect, real_connect_ex, real_getaddrinfo, real_gethostbyname)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
    return self

  def uninstall(self):
    if self._saved:
      (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo,
       socket.gethostbyname) = self._saved
      self._saved = None


# A child Python under the guard: exits 3 (after printing them) when it made any attempt.
_GUARDED_MAIN = """
import runpy, sys, traceback
import remote_storage
guard = remote_storage.NetGuard().install()
sys.argv = sys.argv[1:]
code = 0
try:
  if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
  else:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
  code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
except BaseException:  # pylint: disable=broad-except
  traceback.print_exc()
  code = 1
if guard.attempts:
  print("network guard: non-loopback attempts:", guard.attempts, file=sys.stderr, flush=True)
  code = 3
sys.exit(code)
"""


def guarded_python(args, **kwargs) -> subprocess.CompletedProcess:
  """``python args...`` (a script or ``-m module``) in a child under ``NetGuard``, with this
  process's environment (the emulator's variables included); exit status 3 = a guard refusal."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]))
  env.update(kwargs.pop("env", {}))
  return subprocess.run([sys.executable, "-c", _GUARDED_MAIN, *args],
                        env=env, capture_output=True, text=True, check=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# The emulator and the TLS proxy (the test process's side).


class GcsServer:
  """A running emulator + proxy (see ``gcs_server``)."""

  def __init__(self, info: dict, bucket: str):
    self.endpoint, self.proxy, self.ca = info["endpoint"], info["proxy"], info["ca"]
    self.bucket = bucket
    self.refused = None  # the proxy's refusals, known once the server stopped

  def env(self) -> dict:
    """What every client of a gs:// URL needs to reach the emulator, and only it."""
    return {
        "STORAGE_EMULATOR_HOST": self.endpoint,     # google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": self.endpoint,  # TensorStore
        "https_proxy": self.proxy, "HTTPS_PROXY": self.proxy,  # TensorFlow's curl
        "http_proxy": self.proxy, "HTTP_PROXY": self.proxy,
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": self.ca,
        "EPATH_USE_TF": "",  # etils.epath: TensorFlow's GCS file system (its default)
    }


@contextlib.contextmanager
def gcs_server(bucket: str = "bucket", timeout: float = 60.0):
  """Starts the emulator and proxy in a child process, sets ``GcsServer.env()`` in this process
  while it runs; ``refused`` lists the hosts the proxy turned away once it has stopped."""
  with tempfile.TemporaryDirectory(prefix="gcs-emulator-") as cert_dir:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--bucket", bucket, "--cert-dir", cert_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    server = None
    previous = None
    try:
      ready, _, _ = select.select([proc.stdout], [], [], timeout)
      line = proc.stdout.readline() if ready else ""
      if not line:
        raise RuntimeError(f"the GCS emulator did not start within {timeout} s "
                           f"(exit status {proc.poll()})")
      server = GcsServer(json.loads(line), bucket)
      previous = _apply(server.env())
      yield server
    finally:
      if previous is not None:
        _restore(previous)
      try:
        out, _ = proc.communicate(timeout=30)  # closes its stdin: the child stops
      except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
      if server is not None:
        last = [l for l in out.splitlines() if l.startswith("{")]
        server.refused = json.loads(last[-1])["refused"] if last else ["<no report>"]


# ------------------------------------------------------------------------------------------------
# The child process: emulator + proxy.


def _make_certificates(directory: str):
  """A throw-away CA (ca.pem, to trust) and a certificate for GCS_HOSTS signed by it."""
  from cryptography import x509  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
  from cryptography.x509.oid import NameOID  # pylint: disable=g-import-not-at-top
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = dict(not_valid_before=now - datetime.timedelta(hours=1),
               not_valid_after=now + datetime.timedelta(days=2))

  def certificate(subject, issuer, public_key, signing_key, extensions):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(valid["not_valid_before"])
               .not_valid_after(valid["not_valid_after"]))
    for extension, critical in extensions:
      builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())

  ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resunet_jax test CA")])
  ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, [
      (x509.BasicConstraints(ca=True, path_length=0), True),
      (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                     key_agreement=False, encipher_only=False, decipher_only=False), True),
      (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)])
  leaf = certificate(
      x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]), ca_name,
      key.public_key(), ca_key, [
          (x509.SubjectAlternativeName([x509.DNSName(h) for h in GCS_HOSTS]), False),
          (x509.BasicConstraints(ca=False, path_length=None), True),
          (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
          (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)])
  paths = {name: os.path.join(directory, name) for name in ("ca.pem", "leaf.pem", "leaf.key")}
  pem = serialization.Encoding.PEM
  for name, data in (("ca.pem", ca.public_bytes(pem)), ("leaf.pem", leaf.public_bytes(pem)),
                     ("leaf.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
    with open(paths[name], "wb") as f:
      f.write(data)
  return paths


def _relay(client, upstream_address, first=b""):
  """Copies bytes both ways between ``client`` and the emulator until one side closes, starting
  with ``first`` (else with what the client sends first). The emulator serves one connection at a
  time, so its connection is opened only once the client has sent a request (curl may open a
  tunnel and leave it idle)."""
  if not first:
    try:
      first = client.recv(65536)
    except OSError:
      return
    if not first:
      return
  upstream = socket.create_connection(upstream_address)
  try:
    upstream.sendall(first)
    while True:
      # Bytes already decrypted inside the TLS object are invisible to select().
      pending = client.pending() if isinstance(client, ssl.SSLSocket) else 0
      readable = [client] if pending else select.select([client, upstream], [], [], 120)[0]
      if not readable:
        return
      for source in readable:
        try:
          data = source.recv(65536)
        except ssl.SSLWantReadError:
          continue
        except OSError:
          return
        if not data:
          return
        (upstream if source is client else client).sendall(data)
  finally:
    upstream.close()


class _ProxyHandler(socketserver.BaseRequestHandler):
  """``CONNECT <GCS host>:443``: TLS with the test CA's certificate, then the emulator; a plain
  ``PUT http://<GCS host>/...`` (the emulator's resumable-upload URLs are http://) to the emulator
  too. Anything else: 403, recorded."""

  def handle(self):
    head = b""
    while b"\r\n\r\n" not in head:
      chunk = self.request.recv(4096)
      if not chunk:
        return
      head += chunk
    request_line, rest = head.split(b"\r\n", 1)
    request_line = request_line.decode("latin-1")
    method, target, version = (request_line.split(" ") + ["", "", ""])[:3]
    if method != "CONNECT" and target.startswith("http://"):
      host, _, path = target[len("http://"):].partition("/")
      if host.split(":")[0] in GCS_HOSTS:
        origin_form = f"{method} /{path} {version}\r\n".encode("latin-1")
        _relay(self.request, self.server.upstream, first=origin_form + rest)
        return
    host = target.rsplit(":", 1)[0]
    if method != "CONNECT" or host not in GCS_HOSTS:
      self.server.refused.append(request_line)
      self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return
    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    try:
      client = self.server.tls.wrap_socket(self.request, server_side=True)
    except (ssl.SSLError, OSError):
      return
    try:
      _relay(client, self.server.upstream)
    finally:
      client.close()


class _ProxyServer(socketserver.ThreadingTCPServer):
  daemon_threads = True
  request_queue_size = 128


def _emulator_classes():
  """gcp-storage-emulator's request handler with what the clients used here need (the emulator
  version is pinned in setup.py's test extra)."""
  from http import server as http_server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top

  read_data = emulator._read_data  # pylint: disable=protected-access

  def _read_data(handler, query):
    data = read_data(handler, query)
    # TensorFlow creates a file by uploading zero bytes; the emulator would fail on None.
    return b"" if data is None and query.get("uploadType") == ["media"] else data
  emulator._read_data = _read_data  # pylint: disable=protected-access

  class Handler(emulator.RequestHandler):
    # HTTP/1.1 for "Expect: 100-continue" (TensorFlow's uploads wait 1 s for it otherwise), but
    # one request per connection: the emulator serves one connection at a time.
    protocol_version = "HTTP/1.1"

    generation = None  # of the object a media GET reads

    def end_headers(self):
      if self.generation is not None:
        self.send_header("x-goog-generation", self.generation)
      self.send_header("Connection", "close")
      super().end_headers()

    def handle_expect_100(self):
      self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
      self.wfile.flush()
      return True

    def parse_request(self):
      ok = super().parse_request()
      # TensorFlow sends "Transfer-Encoding: chunked" and a Content-Length; the body is chunked.
      if ok and (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        del self.headers["Content-Length"]
      return ok

    def do_GET(self):
      # TensorFlow >= 2.20 asks for the bucket's layout before renaming a folder (TFDS renames
      # its finished build); the emulator lacks the route: no hierarchical namespace.
      parts = self.path.split("?")[0].split("/")
      if len(parts) == 6 and parts[1:4] == ["storage", "v1", "b"] and parts[5] == "storageLayout":
        body = json.dumps({"kind": "storage#storageLayout", "bucket": parts[4],
                           "hierarchicalNamespace": {"enabled": False}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return
      if self._media_preconditions_failed():
        return
      super().do_GET()

    def _media_preconditions_failed(self):
      """A media GET answers with the object's generation (``x-goog-generation``) and honours
      ``ifGenerationNotMatch`` (304) and ``ifGenerationMatch`` (412), as GCS does: TensorStore
      re-reads an OCDBT manifest it has just written with ifGenerationNotMatch and needs one or
      the other. (Uploads ignore preconditions: one writer per object here.)"""
      path, _, query = self.path.partition("?")
      query = urllib.parse.parse_qs(query)
      match = re.fullmatch(r"(?:/download)?/storage/v1/b/([^/]+)/o/(.+)", path)
      if not match or query.get("alt") != ["media"]:
        return False
      try:
        obj = self.storage.get_file_obj(match.group(1), urllib.parse.unquote(match.group(2)))
      except Exception:  # pylint: disable=broad-except  (missing: the emulator answers 404)
        return False
      self.generation = str(obj["generation"])
      status = None
      if query.get("ifGenerationNotMatch") == [self.generation]:
        status = 304
      elif "ifGenerationMatch" in query and query["ifGenerationMatch"] != [self.generation]:
        status = 412
      if status is None:
        return False
      self.send_response(status)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return True

    def handle(self):
      try:
        super().handle()
      except (BrokenPipeError, ConnectionResetError):
        pass

  class Server(http_server.HTTPServer):
    request_queue_size = 128  # TensorStore opens many connections at once

  return Handler, Server


def _serve(bucket: str, cert_dir: str) -> None:
  import logging  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import buckets  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.storage import Storage  # pylint: disable=g-import-not-at-top
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  handler, server_class = _emulator_classes()
  storage = Storage(use_memory_fs=True)
  buckets.create_bucket(bucket, storage)
  emulator = server_class(("127.0.0.1", 0), functools.partial(handler, storage))
  paths = _make_certificates(cert_dir)
  tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  tls.load_cert_chain(paths["leaf.pem"], paths["leaf.key"])
  tls.set_alpn_protocols(["http/1.1"])
  proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
  proxy.tls, proxy.upstream, proxy.refused = tls, emulator.server_address, []
  for s in (emulator, proxy):
    threading.Thread(target=s.serve_forever, daemon=True).start()
  print(json.dumps({"endpoint": "http://127.0.0.1:%d" % emulator.server_address[1],
                    "proxy": "http://127.0.0.1:%d" % proxy.server_address[1],
                    "ca": paths["ca.pem"]}), flush=True)
  sys.stdin.read()  # until the parent closes it
  proxy.shutdown()
  emulator.shutdown()
  print(json.dumps({"refused": proxy.refused}), flush=True)


if __name__ == "__main__":
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  parser.add_argument("--bucket", default="bucket")
  parser.add_argument("--cert-dir", required=True)
  arguments = parser.parse_args()
  _serve(arguments.bucket, arguments.cert_dir)
