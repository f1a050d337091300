r"""Cross-compiles what train.py (or validation, or separation) runs, for hardware you do not have.

XLA compiles for a TPU slice on any host: with ``libtpu`` installed (``pip install
'resunet_jax[tpu]'``), ``jax.experimental.topologies`` describes the chips of a slice and
``jit(step).lower(<abstract arguments with shardings>).compile()`` builds the real TPU program.
This tool builds exactly the step of ``train.py`` (``resunet_jax.training.program``: the same
mesh over all chips, shardings, donation, dtype policy, model options resolved for the target
platform, global batch from the config) and reports the compiler's figures::

  resunet-aot --config=configs/resunet143_ismir2021_pod.py --topology=v5e:8x8
  python -m resunet_jax.aot --config=configs/small.py --topology=v6e:1x1 --step=eval --json=out.json
  resunet-aot --config=configs/default.py --topology=attached --run     # a GPU/TPU host: time it

It prints, and with ``--json`` writes: the topology and its chips, the per-chip batch, whether the
step fits in a chip's HBM (arguments + outputs - aliased + temporaries, against the capacity that
libtpu reports), FLOPs and bytes accessed per step and per example (``cost_analysis``, per chip),
a roofline estimate of examples per second per chip (the larger of compute time at the chip's
published peak bf16 FLOP/s and memory time at its published HBM bandwidth), the collectives and
copies in the compiled program, the compile time and the libtpu version. All of these are the
compiler's estimates, not timings: ``--run`` on an attached device measures.

When the step does not fit, the exit status is 3 and the message names the largest per-chip batch
that does, found by compiling (``--search`` looks for it also when the step fits). Exit status 2:
bad flags or config; 1: the compile failed for another reason.

libtpu contacts nothing: before JAX starts, the tool sets ``TPU_SKIP_MDS_QUERY`` (no metadata
server), ``TPU_WORKER_HOSTNAMES=localhost`` / ``TPU_WORKER_ID=0`` (no other workers),
``TPU_ACCELERATOR_TYPE`` (no discovery) and ``JAX_PLATFORMS=cpu`` (the host's own backend is the
CPU: the TPU plugin is used only as a compiler), unless they are set already.
"""
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import sys
import time
from typing import Dict, Optional, Sequence

ATTACHED = "attached"
STEPS = ("train", "eval", "separate")
EXIT_DOES_NOT_FIT = 3
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator generation: what the roofline and the fit check use."""
  name: str
  device_kind: str  # jax's Device.device_kind
  peak_bf16_flops: float  # dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  hbm_bytes: float  # usable HBM per chip (as the compiler reports it), bytes
  source: str
  # TPU topology construction (jax.experimental.topologies):
  dims: int = 2  # 2: "AxB"; 3: "AxBxC"
  chip_config: str = "default"  # "megacore": the chip's two TensorCores as one device
  host_chips: int = 4  # chips per host of a multi-host slice
  single_host_max: int = 8  # the largest slice that is one host
  accelerator_type: str = ""  # TPU_ACCELERATOR_TYPE prefix ("v5litepod" -> "v5litepod-8")


# Peak figures: the vendors' published per-chip numbers (dense bf16, HBM bandwidth). Usable HBM:
# what libtpu 0.0.42.1 reports as "available HBM" when a program exceeds it (measured by compiling
# an oversized program for each generation: v5e 15.75G, v6e 31.25G, v4 30.75G, v5p 95.74G, GiB).
CHIPS = {
    "v4": Chip("v4", "TPU v4", 275e12, 1200e9, 30.75 * GiB,
               "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s)",
               dims=3, chip_config="megacore", single_host_max=4, accelerator_type="v4"),
    "v5e": Chip("v5e", "TPU v5 lite", 197e12, 819e9, 15.75 * GiB,
                "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s)",
                accelerator_type="v5litepod"),
    "v5p": Chip("v5p", "TPU v5", 459e12, 2765e9, 95.74 * GiB,
                "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GB HBM2e at "
                "2765 GB/s)", dims=3, chip_config="megacore", single_host_max=4,
                accelerator_type="v5p"),
    "v6e": Chip("v6e", "TPU v6 lite", 918e12, 1640e9, 31.25 * GiB,
                "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB HBM at 1640 GB/s)",
                accelerator_type="v6e"),
    # GPUs, for --topology=attached (capacity: what the device reports, see _attached_chip).
    "h100": Chip("h100", "NVIDIA H100", 989e12, 3350e9, 80e9,
                 "https://www.nvidia.com/en-us/data-center/h100/ (SXM: 989 TFLOP/s dense bf16, "
                 "3.35 TB/s)"),
    "h200": Chip("h200", "NVIDIA H200", 989e12, 4800e9, 141e9,
                 "https://www.nvidia.com/en-us/data-center/h200/ (989 TFLOP/s dense bf16, "
                 "4.8 TB/s)"),
    "a100": Chip("a100", "NVIDIA A100", 312e12, 2039e9, 80e9,
                 "https://www.nvidia.com/en-us/data-center/a100/ (312 TFLOP/s dense bf16, "
                 "2.0 TB/s for 80 GB SXM)"),
}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")

# Set before libtpu loads (see the module docstring).
LIBTPU_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_WORKER_ID": "0",
    # libtpu takes a lock file so that two processes do not drive one TPU; compiling only, several
    # processes (a compile beside a test run) may load it.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


class AotError(ValueError):
  """A bad topology, step or config for cross-compilation (the message says what is expected)."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. "v5e:2x2"
  chip: Chip
  shape: tuple
  attached: bool = False

  @property
  def chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(name: str) -> Topology:
  """``"<generation>:<A>x<B>[x<C>]"`` (v4 and v5p take three dimensions) -> Topology."""
  gen, _, dims = str(name).partition(":")
  if gen not in TPU_CHIPS or not dims:
    raise AotError(f"--topology={name!r}: expected '{ATTACHED}' or <generation>:<chips per "
                   f"dimension>, e.g. v5e:2x2, v6e:1x1, v4:2x2x1, v5p:2x2x1; generations "
                   f"{list(TPU_CHIPS)}")
  chip = CHIPS[gen]
  try:
    shape = tuple(int(d) for d in dims.split("x"))
  except ValueError:
    shape = ()
  if len(shape) != chip.dims or any(d < 1 for d in shape):
    example = "x".join(["2"] * chip.dims)
    raise AotError(f"--topology={name!r}: {gen} slices have {chip.dims} dimensions of positive "
                   f"integers, e.g. {gen}:{example}")
  return Topology(name, chip, shape)


def accelerator_type(topology: Topology) -> str:
  """The Cloud TPU accelerator type of a slice (TPU_ACCELERATOR_TYPE), e.g. v5litepod-8, v4-8.
  v4 and v5p count TensorCores (two per chip), the others chips."""
  count = topology.chips * (2 if topology.chip.chip_config == "megacore" else 1)
  return f"{topology.chip.accelerator_type}-{count}"


def configure_environment(topology: Optional[Topology] = None, environ=None) -> Dict[str, str]:
  """Sets what keeps libtpu from looking for anything off this machine (values already in the
  environment win). Call before JAX initialises its backends. Returns what was set."""
  env = os.environ if environ is None else environ
  wanted = dict(LIBTPU_ENV)
  if topology is not None and not topology.attached:
    wanted["JAX_PLATFORMS"] = "cpu"
    wanted["TPU_ACCELERATOR_TYPE"] = accelerator_type(topology)
  set_now = {}
  for key, value in wanted.items():
    if key not in env:
      env[key] = value
      set_now[key] = value
  if "JAX_PLATFORMS" in set_now and environ is None and "jax" in sys.modules:
    # jax reads JAX_PLATFORMS when it is imported: tell it directly (before any backend starts).
    sys.modules["jax"].config.update("jax_platforms", set_now["JAX_PLATFORMS"])
  return set_now


def topology_devices(topology: Topology):
  """The compile-only devices of a TPU slice."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  chip = topology.chip
  shape3 = tuple(topology.shape) + (1,) * (3 - len(topology.shape))
  if topology.chips <= chip.single_host_max:
    host = shape3  # one host holds the whole slice
  else:
    host = (2, 2, 1)  # 4 chips per host in multi-host slices of every generation here
    if any(s % h for s, h in zip(shape3, host)):
      raise AotError(f"--topology={topology.name}: a multi-host {chip.name} slice is made of "
                     f"2x2 hosts; its first two dimensions must be even")
  desc = topologies.get_topology_desc(topology.name, platform="tpu",
                                      chip_config_name=chip.chip_config,
                                      chips_per_host_bounds=host)
  return list(desc.devices)


def _attached_chip(device) -> Chip:
  kind = device.device_kind
  for chip in CHIPS.values():
    if kind == chip.device_kind or kind.startswith(chip.device_kind + " "):
      found = chip
      break
  else:
    for chip in CHIPS.values():
      if chip.device_kind.split()[-1].lower() in kind.lower():
        found = chip
        break
    else:
      raise AotError(f"--topology={ATTACHED}: no peak figures for device kind {kind!r}; known: "
                     f"{sorted(c.device_kind for c in CHIPS.values())}")
  try:
    limit = device.memory_stats().get("bytes_limit")
  except Exception:  # pylint: disable=broad-except
    limit = None
  return dataclasses.replace(found, hbm_bytes=float(limit)) if limit else found


def attached_topology():
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  if devices[0].platform not in ("tpu", "gpu"):
    raise AotError(f"--topology={ATTACHED}: no GPU or TPU is attached (JAX sees "
                   f"{devices[0].platform} devices)")
  chip = _attached_chip(devices[0])
  return Topology(ATTACHED, chip, (len(devices),), attached=True), devices


# ------------------------------------------------------------------------------------------------
# What the compiled program says.


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def count_ops(hlo_text: str) -> Dict[str, Dict[str, int]]:
  """Collectives (synchronous and the start of asynchronous ones) and copies in an HLO text."""
  def count(op):
    return len(re.findall(r"\s%s(?:-start)?\(" % re.escape(op), hlo_text))
  collectives = {op: count(op) for op in COLLECTIVES}
  collectives = {op: n for op, n in collectives.items() if n}
  copies = len(re.findall(r"\scopy\(", hlo_text)) + len(re.findall(r"\scopy-start\(", hlo_text))
  return {"collectives": collectives, "copies": copies}


def _cost(compiled) -> Dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


_REQUIRED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")
_AVAILABLE = re.compile(r"exceeds available HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def out_of_memory(error: Exception) -> Optional[Dict[str, float]]:
  """{"temp_bytes", "available_bytes"} when ``error`` is the compiler running out of HBM."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  out = {}
  m = _REQUIRED.search(text)
  if m:
    out["temp_bytes"] = float(m.group(1)) * _UNITS[m.group(2)]
  m = _AVAILABLE.search(text)
  if m:
    out["available_bytes"] = float(m.group(1)) * _UNITS[m.group(2)]
  return out


def libtpu_version() -> Optional[str]:
  for dist in ("libtpu", "libtpu-nightly"):
    try:
      return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


# ------------------------------------------------------------------------------------------------
# The programs.


def lowered_step(config, step: str, mesh, per_chip_batch: int, *, chunk_seconds=None):
  """(lowered program, the model it runs, examples per step per chip, seconds of audio per
  example)."""
  from resunet_jax.training import program  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if step in ("train", "eval"):
    data = program.data_axis_size(mesh)  # the chips one replica's batch is split over
    per_chip_replicas = program.num_replicas(config) // (
        int(mesh.shape["replica"]) if program.is_replicated(mesh) else 1)
    config = _with_batch(config, step, per_chip_batch * data)
    if step == "train":
      prog = program.train_program(config, mesh)
    else:
      prog = program.eval_program(config, mesh, num_segments=per_chip_batch * data)
    return (prog.lower(), prog.model, per_chip_batch * per_chip_replicas,
            float(config.data.segment_seconds))
  if step == "separate":
    # The separation tool's program: one device, model.apply on (batch, chunk, channels).
    from resunet_jax import models  # pylint: disable=g-import-not-at-top
    from resunet_jax.separate import chunking  # pylint: disable=g-import-not-at-top
    device = mesh.devices.flat[0]
    model = program.build_model(config, device.platform)
    seconds = chunking.DEFAULT_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds
    plan = chunking.make_plan("crossfade", seconds, min(chunking.DEFAULT_OVERLAP_SECONDS,
                                                        seconds / 2),
                              multiple=4 if model.subbands else 1)
    sharding = jax.sharding.SingleDeviceSharding(device)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    variables = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), variables)
    x = jax.ShapeDtypeStruct((per_chip_batch, plan.chunk, model.audio_channels), jnp.float32,
                             sharding=sharding)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return apply.lower(variables, x), model, per_chip_batch, plan.chunk / 44100.0
  raise AotError(f"--step={step!r}: expected one of {list(STEPS)}")


def analyse(compiled, topology: Topology, per_chip_batch: int, seconds_per_example: float):
  """The report's figures from a compiled program."""
  chip = topology.chip
  mem = compiled.memory_analysis()
  cost = _cost(compiled)
  flops = float(cost.get("flops", 0.0))
  accessed = float(cost.get("bytes accessed", 0.0))
  hbm = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
         + mem.temp_size_in_bytes)
  compute_s = flops / chip.peak_bf16_flops
  memory_s = accessed / chip.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  ops = count_ops(compiled.as_text())
  return {
      "fits": bool(hbm <= chip.hbm_bytes),
      "hbm_capacity_bytes": int(chip.hbm_bytes),
      "hbm_bytes_per_chip": int(hbm),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "generated_code_bytes": int(mem.generated_code_size_in_bytes),
      "hbm_bytes_per_example": (hbm - mem.argument_size_in_bytes) / per_chip_batch,
      "flops_per_step": flops,
      "bytes_accessed_per_step": accessed,
      "flops_per_example": flops / per_chip_batch,
      "bytes_accessed_per_example": accessed / per_chip_batch,
      "flops_per_byte": flops / accessed if accessed else None,
      "roofline_compute_seconds": compute_s,
      "roofline_memory_seconds": memory_s,
      "roofline_bound": "compute" if compute_s >= memory_s else "memory",
      "examples_per_chip_per_second_roofline": per_chip_batch / step_s if step_s else None,
      "audio_seconds_per_chip_per_second_roofline": (per_chip_batch * seconds_per_example / step_s
                                                     if step_s else None),
      "xla_optimal_seconds": cost.get("optimal_seconds"),
      "collectives": ops["collectives"],
      "copies": ops["copies"],
  }


def compile_report(config, topology: Topology, devices, step="train", per_chip_batch=None, *,
                   chunk_seconds=None, hlo_path=None):
  """Compiles ``step`` for ``topology`` at ``per_chip_batch`` (default: the config's) and returns
  the report dict; when the compiler runs out of HBM, ``fits`` is False and the figures the error
  gives (temporaries required, HBM available) are in it."""
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  chips = len(devices)
  if step == "separate":
    mesh = step_lib.make_mesh(devices[:1])
    per_chip_batch = per_chip_batch or 1
  else:
    mesh, per_chip_batch = step_mesh(config, step, devices, per_chip_batch)
  report = {"topology": topology.name, "generation": topology.chip.name,
            "device_kind": topology.chip.device_kind,
            "chips": chips if step != "separate" else 1, "step": step,
            "per_chip_batch": per_chip_batch}
  replicas = _replicas(config) if step != "separate" else 1
  if replicas > 1:
    report.update(replicas=replicas, replica_method=_replica_method(config, mesh),
                  replica_mesh=dict(mesh.shape),
                  replicas_per_chip=replicas // int(mesh.shape[step_lib.REPLICA_AXIS]))
  t = time.time()
  lowered, model, examples, seconds = lowered_step(config, step, mesh, per_chip_batch,
                                                   chunk_seconds=chunk_seconds)
  report["examples_per_chip_per_step"] = examples  # every replica's on the chip
  report["model"] = model_summary(config, model, per_chip_batch, train=step == "train")
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = out_of_memory(e)
    if oom is None:
      raise
    report.update(fits=False, compile_seconds=time.time() - t,
                  hbm_capacity_bytes=int(oom.get("available_bytes", topology.chip.hbm_bytes)),
                  temp_bytes_required=oom.get("temp_bytes"), error=str(e).split("\n")[0][:500])
    return report, None
  report["compile_seconds"] = time.time() - t
  report.update(analyse(compiled, topology, examples, seconds))
  if hlo_path:
    from resunet_jax import fileutil  # pylint: disable=g-import-not-at-top
    fileutil.write_text_atomic(hlo_path, compiled.as_text())
  return report, compiled


def _replicas(config):
  from resunet_jax.training import program  # pylint: disable=g-import-not-at-top
  return program.num_replicas(config)


def _replica_method(config, mesh):
  from resunet_jax.training import program  # pylint: disable=g-import-not-at-top
  return program.resolve_replica_method(config, program.mesh_platform(mesh))


def _with_batch(config, step, batch):
  config = config.copy_and_resolve_references()
  if step == "train":
    config.global_batch_size = batch
  else:
    config.validation.batch_size = batch
  return config


def step_mesh(config, step, devices, per_chip_batch=None):
  """(mesh, per-chip batch) of ``step`` ("train" or "eval") on ``devices``: the mesh train.py
  makes (``program.make_mesh_for``: 1-D ``data``, or ``(replica, data)`` with config.replicas > 1)
  and the examples of one replica on one chip -- the config's batch over the ``data`` axis, or
  ``per_chip_batch``."""
  from resunet_jax.training import program  # pylint: disable=g-import-not-at-top
  try:
    mesh = program.make_mesh_for(config, devices)
  except ValueError as e:
    raise AotError(str(e)) from None
  data = program.data_axis_size(mesh)
  if per_chip_batch is None:
    per_chip_batch = default_per_chip_batch(config, step, data)
  elif _replicas(config) > 1:  # the layout may depend on the batch: lay the new one out
    try:
      mesh = program.make_mesh_for(_with_batch(config, step, per_chip_batch * data), devices)
    except ValueError as e:
      raise AotError(str(e)) from None
    if program.data_axis_size(mesh) != data:
      raise AotError(f"per-chip batch {per_chip_batch} changes the replica layout of "
                     f"config.replicas={_replicas(config)}; pick a multiple of {data}")
  return mesh, per_chip_batch


def default_per_chip_batch(config, step, chips):
  """The config's batch (train: global_batch_size, eval: validation.batch_size; per replica)
  over ``chips`` (the devices along the ``data`` axis)."""
  if step == "train":
    batch = int(config.global_batch_size)
  elif step == "eval":
    batch = int(config.validation.batch_size)
  else:
    return 1
  if batch % chips:
    raise AotError(f"config global batch {batch} ({step}) cannot be split evenly over the "
                   f"{chips} chips of the topology: it must be a multiple of {chips}")
  return batch // chips


def _memory_need(report):
  """(per-chip bytes needed, bytes that do not grow with the batch) from a report, if known."""
  fixed = report.get("argument_bytes")
  if "hbm_bytes_per_chip" in report:
    return report["hbm_bytes_per_chip"], fixed
  if report.get("temp_bytes_required"):  # a compile that ran out of memory
    return report["temp_bytes_required"] + (fixed or 0), fixed
  return None, fixed


def _predict(reports, capacity, lo, hi):
  """The batch that memory growing linearly with it predicts to just fit (from the two compiles
  closest to the boundary, or one and the batch-independent part), inside (lo, hi)."""
  points = [(b, _memory_need(r)) for b, r in reports.items()]
  points = [(b, need, fixed) for b, (need, fixed) in points if need is not None]
  if not points or capacity is None:
    return None
  points.sort(key=lambda p: abs(p[1] - capacity))
  if len(points) >= 2 and points[0][0] != points[1][0]:
    (b1, m1, _), (b2, m2, _) = points[:2]
    slope = (m2 - m1) / (b2 - b1)
    base = m1 - slope * b1
  else:
    b1, m1, fixed = points[0]
    base = fixed or 0.0
    slope = (m1 - base) / b1
  if slope <= 0:
    return None
  guess = int((capacity - base) // slope)
  upper = hi - 1 if hi is not None else guess
  return max(lo + 1, min(guess, upper))


def largest_fitting_batch(try_batch, start: int, fits_at_start: bool, limit: int = 4096,
                          capacity=None, first_report=None, log=print):
  """The largest per-chip batch b (1 <= b <= limit) for which ``try_batch(b)`` (a report) fits,
  by compiling. Each compile's memory figures (or, when it ran out of memory, the temporaries the
  compiler asked for) predict the boundary on a line through the two nearest points; without
  figures it doubles/halves to bracket it, then bisects. Returns (batch or 0, {batch: report})."""
  reports = {} if first_report is None else {start: first_report}

  def fits(b):
    if b not in reports:
      reports[b] = try_batch(b)
      r = reports[b]
      need, _ = _memory_need(r)
      log(f"  per-chip batch {b}: {'fits' if r['fits'] else 'does not fit'}"
          + (f" ({need / GiB:.2f} GiB)" if need else ""))
    return reports[b]["fits"]

  lo, hi = (start, None) if fits(start) else (0, start)
  del fits_at_start  # the first report says it
  while hi is None or hi - lo > 1:
    guess = _predict(reports, capacity, lo, hi)
    if hi is None:  # no failure yet: bracket upwards
      b = guess if guess is not None and guess > lo else lo * 2
      b = min(b, limit)
      if b <= lo:
        return lo, reports
    elif lo == 0 and guess is None:
      b = max(hi // 2, 1)
    else:
      b = guess if guess is not None and lo < guess < hi else (lo + hi) // 2
      b = max(b, 1)
    if fits(b):
      lo = b
      if b == limit:
        return lo, reports
    else:
      hi = b
      if b == 1:
        return 0, reports
  return lo, reports


def run_on_device(config, devices, step, per_chip_batch, steps=10):
  """Times ``step`` (train only) on the attached devices: examples per second per chip."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import program  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  if step != "train":
    raise AotError("--run times the train step only")
  if _replicas(config) > 1:
    raise AotError("--run times one run's step: use config.replicas=1")
  config = config.copy_and_resolve_references()
  config.global_batch_size = per_chip_batch * len(devices)
  mesh = step_lib.make_mesh(devices)
  prog = program.train_program(config, mesh)
  state = state_lib.init_train_state(prog.model, prog.tx, config.seed,
                                     sharding=step_lib.replicated(mesh))
  abstract = prog.abstract_batch()
  rng = np.random.default_rng(0)
  batch = {k: step_lib.global_array_from_host(
      mesh, (0.1 * rng.standard_normal(v.shape)).astype(np.float32)) for k, v in abstract.items()}
  metrics = step_lib.empty_metrics(mesh)
  for _ in range(2):  # compile and warm up
    state, metrics = prog.train_step(state, batch, metrics)
  jax.block_until_ready(state)
  t = time.time()
  for _ in range(steps):
    state, metrics = prog.train_step(state, batch, metrics)
  jax.block_until_ready(state)
  seconds = (time.time() - t) / steps
  return {"measured_step_seconds": seconds,
          "measured_examples_per_chip_per_second": per_chip_batch / seconds,
          "measured_steps": steps}


# ------------------------------------------------------------------------------------------------
# Report.


def _gib(x):
  return f"{x / GiB:.2f} GiB"


def format_report(r) -> str:
  lines = [f"{r['step']} step of {r.get('config', '?')} on {r['topology']} ({r['chips']} "
           f"{r['device_kind']} chip(s)), per-chip batch {r['per_chip_batch']}"
           + (f" per replica, {r['replicas']} replicas ({r['replicas_per_chip']} per chip, "
              f"{r['replica_method']}; {r['examples_per_chip_per_step']} examples per chip per "
              "step, which the per-example figures count)" if r.get("replicas", 1) > 1 else "")
           + ":"]
  if r.get("error") and "hbm_bytes_per_chip" not in r:
    lines.append(f"  does NOT fit: {r['error']}")
  else:
    lines.append(f"  HBM per chip {_gib(r['hbm_bytes_per_chip'])} of {_gib(r['hbm_capacity_bytes'])}"
                 f" -> {'fits' if r['fits'] else 'does NOT fit'} (arguments "
                 f"{_gib(r['argument_bytes'])}, outputs {_gib(r['output_bytes'])}, aliased "
                 f"{_gib(r['alias_bytes'])}, temporaries {_gib(r['temp_bytes'])})")
    lines.append(f"  per step per chip: {r['flops_per_step'] / 1e12:.3f} TFLOP, "
                 f"{r['bytes_accessed_per_step'] / 1e9:.2f} GB accessed "
                 f"({r['flops_per_byte'] or 0:.1f} FLOP/B); per example "
                 f"{r['flops_per_example'] / 1e12:.3f} TFLOP, "
                 f"{r['bytes_accessed_per_example'] / 1e9:.2f} GB")
    lines.append(f"  roofline (estimate, not a timing): "
                 f"{r['examples_per_chip_per_second_roofline']:.2f} examples/s per chip, "
                 f"{r['roofline_bound']}-bound (compute {r['roofline_compute_seconds'] * 1e3:.1f} ms,"
                 f" memory {r['roofline_memory_seconds'] * 1e3:.1f} ms per step)")
    lines.append(f"  collectives {r['collectives'] or 'none'}, copies {r['copies']}; compiled in "
                 f"{r['compile_seconds']:.1f} s with libtpu {r.get('libtpu_version')}")
  if r.get("largest_fitting_per_chip_batch") is not None:
    lines.append(f"  largest per-chip batch that fits: {r['largest_fitting_per_chip_batch']} "
                 "(found by compiling)")
  if r.get("measured_examples_per_chip_per_second") is not None:
    lines.append(f"  measured: {r['measured_examples_per_chip_per_second']:.2f} examples/s per "
                 f"chip ({r['measured_step_seconds'] * 1e3:.1f} ms per step)")
  return "\n".join(lines)


def model_summary(config, model, per_chip_batch=None, train=True):
  """What the compiled program's model is (its runtime options as resolved for the target;
  ``chunks``: the folded layout's frequency chunks at ``per_chip_batch`` examples per chip, in
  training (``train``) or inference)."""
  # MobileNet keeps the natural layout whatever ``layout`` says (its depthwise convolutions have
  # no folded form): report what its program computes.
  natural = model.backbone == "mobilenet"
  return {"arch": config.model.arch, "dtype": None if model.dtype is None else str(model.dtype),
          "layout": "natural" if natural else model.layout, "remat": model.remat,
          "folds": [1] * len(model.folds()) if natural else list(model.folds()),
          "chunks": 1 if natural or not per_chip_batch else model.chunks(per_chip_batch, train),
          "conv_backend": model.conv_backend}


def cross_compile(config, topology_name: str, step="train", *, search=False, run=False,
                  chunk_seconds=None, per_chip_batch=None, hlo_path=None, log=print,
                  max_batch=4096):
  """The whole tool as a function: returns the report (a dict; ``fits`` False: exit status 3)."""
  if step not in STEPS:
    raise AotError(f"--step={step!r}: expected one of {list(STEPS)}")
  if topology_name == ATTACHED:
    topology, devices = attached_topology()
  else:
    topology = parse_topology(topology_name)
    configure_environment(topology)
    devices = topology_devices(topology)
  if run and not topology.attached:
    raise AotError(f"--run needs --topology={ATTACHED} (a GPU or TPU on this host)")
  report, _ = compile_report(config, topology, devices, step, per_chip_batch,
                             chunk_seconds=chunk_seconds, hlo_path=hlo_path)
  report.update(libtpu_version=libtpu_version(), jax_version=_jax_version(),
                chip_source=topology.chip.source,
                peak_bf16_flops=topology.chip.peak_bf16_flops,
                hbm_bandwidth=topology.chip.hbm_bandwidth)
  if search or not report["fits"]:
    log(f"searching the largest per-chip batch that fits on {topology.name} ...")
    best, tried = largest_fitting_batch(
        lambda b: compile_report(config, topology, devices, step, b,
                                 chunk_seconds=chunk_seconds)[0],
        report["per_chip_batch"], report["fits"], limit=max_batch,
        capacity=report.get("hbm_capacity_bytes"), first_report=report, log=log)
    report["largest_fitting_per_chip_batch"] = best
    report["search"] = {str(b): {k: r.get(k) for k in ("fits", "hbm_bytes_per_chip",
                                                       "temp_bytes_required", "compile_seconds")}
                        for b, r in sorted(tried.items())}
  if run and report["fits"]:
    report.update(run_on_device(config, devices, step, report["per_chip_batch"]))
  return report


def _jax_version():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.__version__


def exit_status(report) -> int:
  return 0 if report["fits"] else EXIT_DOES_NOT_FIT


def write_json(path, report):
  from resunet_jax import fileutil  # pylint: disable=g-import-not-at-top
  fileutil.write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
