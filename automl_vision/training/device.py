"""Choosing the fastest accurate execution path on this machine.

CPUs differ a lot: on an Intel CPU with AMX, bf16 autocast with channels-last doubles a
small CNN's training speed; on an AVX2-only AMD EPYC the same bf16 path is ten times
slower than fp32. So the path is never assumed: on CPU a short measurement (training
steps of a small CNN, the candidate paths taking turns; about two seconds) picks it,
and the result is remembered per CPU model and extensions, torch version and thread count in
``~/.cache/automl-vision/exec_path.json``. On CUDA, torch's capability checks decide:
bf16 autocast where the GPU supports it, else fp16 with a gradient scaler, channels-last
and cudnn benchmark. Users can force any part with ``--device``, ``--precision`` and
``--channels-last``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from automl_vision.types import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_FILE = Path(os.environ.get("AUTOML_VISION_CACHE", Path.home() / ".cache" / "automl-vision")) / "exec_path.json"


@dataclass
class ExecPath:
    """How trials run: device, autocast dtype and memory format, and why."""

    device: str
    precision: str  # fp32, bf16 or fp16
    channels_last: bool
    reason: str
    measured: dict | None = None
    compile: bool = False  # torch.compile the model for training (--compile)
    device_data: str = "auto"  # cached images on the GPU: auto (when they fit), on, off (pinned host memory)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return torch.autocast(self.torch_device.type, enabled=False)
        return torch.autocast(self.torch_device.type, dtype=dtype)

    def for_network(self, model: nn.Module, image_shape: tuple[int, ...]) -> "ExecPath":
        """This path for training ``model`` on images of ``image_shape`` (C, H, W): itself,
        or fp32 where bf16 on CPU would train it on wrong gradients.

        oneDNN's bf16 weight gradient of a strided convolution whose input is one pixel
        high or wide (a ResNet's last stage at 16 px) is garbage on Intel CPUs with AMX
        (torch 2.14: relative error 1e20 and more, NaN in a fifth of the calls; 2x2 inputs
        and fp32 are exact). The forward pass is right, so inference keeps the path. One
        forward pass of two blank images in eval mode finds such convolutions."""
        if self.precision != "bf16" or self.torch_device.type != "cpu":
            return self
        found: list[str] = []

        def look(module, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.ndim == 4 and min(x.shape[-2:]) == 1 and max(module.stride) > 1:
                found.append(type(module).__name__)

        handles = [m.register_forward_pre_hook(look) for m in model.modules() if isinstance(m, nn.Conv2d)]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(torch.zeros((2, *image_shape), device=self.torch_device))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        if not found:
            return self
        return replace(self, precision="fp32", reason=(
            f"fp32 for this network: it applies {len(found)} strided convolution(s) to 1-pixel feature maps at "
            f"{image_shape[-1]} px, whose bf16 gradient oneDNN computes wrongly on CPU"))

    def describe(self) -> str:
        fmt = "channels-last" if self.channels_last else "contiguous"
        return f"{self.device}, {self.precision}, {fmt} ({self.reason})"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> str:
    if device in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--device mps: Apple MPS is not available on this machine")
        return device
    if device == "cpu":
        return device
    raise UsageError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


class _ProbeCNN(nn.Module):
    """The shape of the search's first portfolio network (a stride-2 stem, four 3x3 conv + BN + ReLU
    stages of 32-256 channels, each followed by a 2x2 max-pool): timed at 64 px, the CPU's default
    training side. A smaller probe network at 32 px did not tell the memory layouts apart: on a 2-core
    AMD EPYC with AVX512-BF16 it measured bf16 4,552 against bf16+cl 4,517 img/s and picked the
    contiguous layout, in which this network then trained at 128 px at 312-326 img/s against 612-726
    with channels-last (a 10-minute search's final fit ran 45 epochs where 102 were planned)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        layers, cin = conv(3, widths[0], 2), widths[0]
        for width in widths:
            layers += conv(cin, width) + [nn.MaxPool2d(2)]
            cin = width
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    def forward(self, x):
        return self.net(x)


# which probe measured a cached figure: a figure of another probe network or side is measured again
PROBE_VERSION = "plain4stage@64"


class _Probe:
    """One candidate path's training step of ``_ProbeCNN`` on a fixed random batch, ready to be timed."""

    def __init__(self, precision: str, channels_last: bool, size: int = 64, batch: int = 64):
        torch.manual_seed(0)
        self.model = _ProbeCNN()
        self.x = torch.rand(batch, 3, size, size)
        self.y = torch.randint(0, 10, (batch,))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.path = ExecPath("cpu", precision, channels_last, "probe")
        self.batch = batch

    def step(self) -> float:
        """Seconds of one forward + backward + update."""
        t0 = time.perf_counter()
        with self.path.autocast():
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def _measure(names: list[str], rounds: int = 3, steps: int = 3) -> dict[str, float]:
    """Images per second of each candidate path (``fp32``, ``fp32+cl``, ``bf16+cl``, ...): its fastest step.

    The candidates take turns, ``rounds`` times ``steps`` steps each, after one untimed warm-up step each, so
    that a few hundred milliseconds of contention (another process, a noisy neighbour of a virtual machine)
    slow one round, not one candidate: measured one after another, a 2-core AVX512-BF16 Xeon once recorded
    fp32+cl at 810 img/s against 1,563 in a quiet re-measure, and the wrong path was cached for the machine.
    """
    probes = {name: _Probe(name.split("+")[0], name.endswith("+cl")) for name in names}
    for probe in probes.values():
        probe.step()  # the first step warms up kernels
    best = dict.fromkeys(probes, float("inf"))
    for _ in range(rounds):
        for name, probe in probes.items():
            for _ in range(steps):
                best[name] = min(best[name], probe.step())
    return {name: probes[name].batch / best[name] for name in probes}


# CPU extensions that decide which path is fastest; the model name alone does not tell them apart
# (virtual machines report "Intel(R) Xeon(R) Processor" with and without AMX)
_PATH_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpu_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_extensions() -> list[str]:
    """Which of the extensions that decide the fastest path (``_PATH_FLAGS``) this CPU has."""
    flags = set(_cpu_fields().get("flags", "").split())
    return [f for f in _PATH_FLAGS if f in flags]


def _kernel_isa() -> str:
    """The instruction sets torch's and oneDNN's kernels may use in this process: the CPU's flags
    are not enough, since ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` cap them (a user or
    a container may set them), and a capped process runs at other speeds on the same CPU."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all"
    return f"aten {torch.backends.cpu.get_cpu_capability()}|onednn {onednn.lower()}"


def _cpu_key() -> str:
    model = _cpu_fields().get("model name") or platform.processor() or platform.machine()
    isa = "+".join(cpu_extensions()) or "-"
    return (f"{model}|{isa}|{_kernel_isa()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
            f"|bf16 {cpu_supports_bf16()}|probe {PROBE_VERSION}")


def choose_cpu_path(precision: str = "auto", channels_last: str = "auto", use_cache: bool = True) -> ExecPath:
    if precision == "fp16":
        raise UsageError("--precision fp16 is for CUDA devices; on CPU use fp32 or bf16")
    if precision == "bf16" and not cpu_supports_bf16():
        raise UsageError("--precision bf16: this CPU has no bf16 support in oneDNN (no AVX512-BF16 or AMX); use fp32")
    forced_cl = None if channels_last == "auto" else channels_last == "on"
    if precision != "auto" and forced_cl is not None:
        return ExecPath("cpu", precision, forced_cl, "forced by the user")
    key = _cpu_key()
    measured = None
    if use_cache:
        try:
            measured = json.loads(CACHE_FILE.read_text()).get(key)
        except (OSError, ValueError):
            measured = None
    if measured is None:
        measured = _measure(["fp32", "fp32+cl", "bf16+cl", "bf16"] if cpu_supports_bf16() else ["fp32", "fp32+cl"])
        if use_cache:
            try:
                CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
                data = {}
                if CACHE_FILE.exists():
                    data = json.loads(CACHE_FILE.read_text())
                data[key] = measured
                tmp = CACHE_FILE.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, CACHE_FILE)
            except (OSError, ValueError):
                pass
    candidates = {
        name: ips
        for name, ips in measured.items()
        if (precision == "auto" or name.split("+")[0] == precision)
        and (forced_cl is None or ("+cl" in name) == forced_cl)
    }
    best = max(candidates, key=candidates.get)
    prec = best.split("+")[0]
    cl = "+cl" in best
    base = measured["fp32"]
    # bf16 must buy a clear speed-up to be worth its lower precision
    if prec == "bf16" and precision == "auto" and candidates[best] < 1.2 * max(measured["fp32"], measured["fp32+cl"]):
        prec, cl = "fp32", measured["fp32+cl"] > measured["fp32"] if forced_cl is None else forced_cl
        best = "fp32+cl" if cl else "fp32"
    speed = ", ".join(f"{k} {v:.0f} img/s" for k, v in measured.items())
    return ExecPath("cpu", prec, cl, f"measured on this CPU: {speed}; picked {best} ({candidates[best] / base:.2f}x fp32)", measured)


def choose_cuda_path(device: str, precision: str = "auto", channels_last: str = "auto") -> ExecPath:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        reason = "bf16 supported by this GPU" if precision == "bf16" else "no bf16 on this GPU: fp16 with a grad scaler"
    else:
        reason = "precision forced by the user"
    cl = channels_last != "off"
    return ExecPath(device, precision, cl, reason)


def apply_gpu_options(path: ExecPath, options) -> ExecPath:
    """Set the optional parts of ``path`` from a search's ``settings.options`` (a
    SearchOptions: ``compile``, ``device_data`` auto/on/off)."""
    path.compile = bool(options.compile)
    mode = options.device_data or "auto"
    if mode not in ("auto", "on", "off"):
        raise UsageError(f"--device-data {mode!r}: expected auto, on or off")
    path.device_data = mode
    if path.compile and not hasattr(torch, "compile"):
        raise UsageError("--compile needs torch 2.0 or newer")
    return path


def data_fits_on_device(nbytes: int, path: ExecPath, share: float = 0.3) -> bool:
    """Whether the cached images (``nbytes``) should live on the device.

    Always on CPU. On CUDA: ``--device-data on/off`` decides, else they go to the GPU when
    they take less than ``share`` of its free memory, leaving the rest to activations.
    """
    dev = path.torch_device
    if dev.type != "cuda":
        return True
    if path.device_data in ("on", "off"):
        return path.device_data == "on"
    free, _total = torch.cuda.mem_get_info(dev)
    return nbytes < share * free


def choose(device: str = "auto", precision: str = "auto", channels_last: str = "auto") -> ExecPath:
    """The execution path for ``device``, measured or checked as described above."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if channels_last not in ("auto", "on", "off"):
        raise UsageError(f"--channels-last {channels_last!r}: expected auto, on or off")
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        return choose_cuda_path(dev, precision, channels_last)
    if dev == "mps":
        return ExecPath("mps", "fp32" if precision == "auto" else precision, channels_last == "on", "Apple MPS")
    return choose_cpu_path(precision, channels_last)


def plan_devices(devices: str | None, workers: int | None, device: str = "auto") -> list[str]:
    """One device a worker, from ``--devices`` and ``--workers``.

    Args:
        devices: ``None``, ``"auto"`` (every CUDA device, else the CPU), ``"cpu"`` or a
            comma-separated list such as ``"cuda:0,cuda:1"``.
        workers: number of worker processes; with several devices they are assigned
            round-robin (two workers per GPU with ``--workers 4`` on two GPUs).
        device: the ``--device`` option, used when ``devices`` is not given.

    Returns:
        One device string a worker. Raises UsageError for a device that is not there.
    """
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if devices is None or devices.strip() == "":
        if not workers or workers == 1:
            return [device]
        base = resolve_device(device)
        if base == "cuda":
            import torch

            pool = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            pool = [base]
    elif devices.strip() == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        pool = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    else:
        pool = []
        for name in (d.strip() for d in devices.split(",")):
            if not name:
                continue
            if name == "auto":
                raise UsageError("--devices: 'auto' cannot be combined with other devices")
            resolved = resolve_device(name)
            if resolved == "cuda":
                resolved = "cuda:0"
            if resolved in pool and resolved != "cpu":
                raise UsageError(f"--devices: {name} is listed twice; use --workers N for several workers a device")
            pool.append(resolved)
        if not pool:
            raise UsageError(f"--devices {devices!r}: expected auto, cpu or a list such as cuda:0,cuda:1")
    n = workers or len(pool)
    return [pool[i % len(pool)] for i in range(n)]
