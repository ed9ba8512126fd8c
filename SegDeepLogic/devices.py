"""Compute devices for network inference: selection, mixed precision and out-of-memory handling.

* :func:`resolve_device` -- ``"auto"`` (CUDA, then Apple MPS, then CPU) or an explicit device
  (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``), with a clear error when it is unavailable.
* :func:`resolve_precision` -- the autocast dtype: bf16 (fp16 where bf16 is unsupported) on
  CUDA, fp16 on MPS, fp32 on CPU (see the note below).
* :func:`autocast` -- a context manager that is a no-op for fp32.
* :func:`is_out_of_memory` -- recognises the out-of-memory errors of every backend.
* :func:`free_memory_bytes` / :func:`fits_in_memory` -- whether a buffer fits on a device.
* :func:`run_with_fallbacks` -- retry a computation with fewer windows per batch, then with the
  output accumulator on the CPU, then entirely on the CPU, and report every fallback taken.

CPU precision
-------------
On CPU the default is fp32. bf16 autocast only pays off on processors with native bf16 matrix
instructions (AVX512-BF16 / AMX); elsewhere it is emulated and slower, and it changes the
logits by ~0.1-0.2 (enough to move boundary voxels). The benchmark
``benchmarks/bench_inference.py`` measures both on the machine it runs on and records the
ratio (on an AMD EPYC with AVX512-BF16: 0.52x the time of fp32 for a [16, 32, 64, 128] U-Net
on 64³ windows, 0.91x for the tiny [8, 16, 32] test model); pass ``precision="bf16"``
explicitly where it measured faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch

from .errors import SegDeepError

__all__ = [
    "DeviceError",
    "InferenceOutOfMemoryError",
    "Precision",
    "RunConfig",
    "autocast",
    "available_devices",
    "fits_in_memory",
    "free_memory_bytes",
    "is_out_of_memory",
    "precision_name",
    "resolve_device",
    "resolve_precision",
    "run_with_fallbacks",
]

Precision = Literal["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
T = TypeVar("T")


class DeviceError(SegDeepError, ValueError):
    """The requested compute device or precision is unknown or not available on this machine."""


class InferenceOutOfMemoryError(SegDeepError, MemoryError):
    """Inference ran out of memory even after every fallback (smaller batches, CPU)."""


# --------------------------------------------------------------------------------------------
# Device selection
# --------------------------------------------------------------------------------------------
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Names of the devices usable here, best first.

    Examples
    --------
    >>> "cpu" in available_devices()
    True
    """
    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names + ["cpu"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a usable :class:`torch.device`.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` picks CUDA if available, then Apple MPS, then the CPU. Otherwise an explicit
        device: ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        For an unknown name, or a device this machine does not have (the message lists the
        available ones).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    SegDeepLogic.devices.DeviceError: unknown device 'tpu': use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = str(spec).strip().lower()
    if name in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    available = ", ".join(available_devices())
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available (this PyTorch build "
                f"{'has no CUDA support' if torch.version.cuda is None else 'finds no usable NVIDIA GPU'}); "
                f"available: {available}. Use --device auto or cpu."
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist; available: {available}"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {spec!r} requested but Apple MPS is not available on this machine; available: {available}")
        return torch.device("mps")
    raise DeviceError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------
def resolve_precision(device: torch.device, precision: Precision | str = "auto") -> torch.dtype:
    """The compute dtype for ``device``: fp32, or the autocast dtype (fp16/bf16).

    ``"auto"`` gives bf16 on CUDA GPUs that support it (fp16 on older ones), fp16 on MPS and
    fp32 on the CPU (bf16 is slower there unless the processor has native bf16 units; see
    the module notes).

    Examples
    --------
    >>> resolve_precision(torch.device("cpu"))
    torch.float32
    >>> resolve_precision(torch.device("cpu"), "bf16")
    torch.bfloat16
    """
    name = str(precision).strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    aliases = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
    name = aliases.get(name, name)
    if name not in _DTYPES:
        raise DeviceError(f"unknown precision {precision!r}: use 'auto', 'fp32', 'fp16' or 'bf16'")
    return _DTYPES[name]


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` and so on (for reports).

    Examples
    --------
    >>> precision_name(torch.float16)
    'fp16'
    """
    for name, d in _DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed-precision autocast on ``device`` for fp16/bf16; nothing for fp32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
# torch's CPU allocator says "DefaultCPUAllocator: can't allocate memory"; the OS says "Cannot allocate memory".
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
)
_OOM_MESSAGES = OOM_MESSAGES


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error of any backend (CUDA, MPS, the CPU allocator).

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    >>> is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    True
    >>> is_out_of_memory(RuntimeError("shape mismatch"))
    False
    """
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(m in message for m in _OOM_MESSAGES)
    return False


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None where it cannot be queried (CPU, MPS)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory cached by PyTorch's allocator is free for our tensors too.
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return None


def fits_in_memory(device: torch.device, nbytes: int, *, fraction: float = 0.5) -> bool:
    """Whether a buffer of ``nbytes`` fits in ``fraction`` of the free memory of ``device``.

    The CPU (and devices that cannot be queried) always answer True: host memory problems
    surface as :class:`MemoryError` instead.

    Examples
    --------
    >>> fits_in_memory(torch.device("cpu"), 10**12)
    True
    """
    free = free_memory_bytes(device)
    return True if free is None else nbytes <= fraction * free


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error so the retry starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


# --------------------------------------------------------------------------------------------
# Out-of-memory fallbacks
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where and how one inference attempt runs.

    Attributes
    ----------
    device : torch.device
        Where the network runs.
    stitch_device : torch.device
        Where the blended output (the accumulator) lives.
    batch_size : int
        Sliding windows per network call.
    dtype : torch.dtype
        Compute precision (fp32, or the autocast dtype).
    """

    device: torch.device
    stitch_device: torch.device
    batch_size: int
    dtype: torch.dtype = torch.float32

    def describe(self) -> str:
        return (
            f"network on {self.device}, stitching on {self.stitch_device}, "
            f"{self.batch_size} window(s) per batch, {precision_name(self.dtype)}"
        )


def next_fallback(config: RunConfig) -> tuple[RunConfig, str] | None:
    """The next, less memory-hungry configuration after an out-of-memory error, or None.

    The order is: halve the windows per batch (down to 1); then move the accumulator to the
    CPU; then run everything on the CPU in fp32.

    Examples
    --------
    >>> cfg = RunConfig(torch.device("cuda", 0), torch.device("cuda", 0), 2)
    >>> cfg, why = next_fallback(cfg); why
    'out of memory on cuda:0 with 2 windows per batch: retrying with 1'
    >>> cfg, why = next_fallback(cfg); why
    'out of memory on cuda:0 with 1 window per batch: retrying with the output stitched on the CPU'
    >>> cfg, why = next_fallback(cfg); why
    'out of memory on cuda:0 even with CPU stitching: retrying on the CPU (fp32)'
    >>> next_fallback(cfg) is None
    True
    """
    if config.batch_size > 1:
        smaller = max(1, config.batch_size // 2)
        return (
            dataclasses.replace(config, batch_size=smaller),
            f"out of memory on {config.device} with {config.batch_size} windows per batch: retrying with {smaller}",
        )
    cpu = torch.device("cpu")
    if config.stitch_device.type != "cpu":
        return (
            dataclasses.replace(config, stitch_device=cpu),
            f"out of memory on {config.device} with 1 window per batch: retrying with the output stitched on the CPU",
        )
    if config.device.type != "cpu":
        return (
            RunConfig(cpu, cpu, 1, torch.float32),
            f"out of memory on {config.device} even with CPU stitching: retrying on the CPU (fp32)",
        )
    return None


def run_with_fallbacks(
    attempt: Callable[[RunConfig], T],
    config: RunConfig,
    *,
    on_fallback: Callable[[str], None] | None = None,
) -> tuple[T, RunConfig, list[str]]:
    """Run ``attempt(config)``, stepping down :func:`next_fallback` after each out-of-memory error.

    Parameters
    ----------
    attempt : callable
        Does the whole computation for one :class:`RunConfig` (it is restarted from scratch
        after an out-of-memory error, so a partial result is never used).
    config : RunConfig
        The first configuration to try.
    on_fallback : callable, optional
        Called with the message of each fallback as it happens (for logs and progress).

    Returns
    -------
    result, final RunConfig, list of fallback messages (empty when the first try worked)

    Raises
    ------
    InferenceOutOfMemoryError
        When even the CPU runs out of memory; the message lists what was tried.

    Examples
    --------
    >>> def attempt(cfg):
    ...     if cfg.batch_size > 1:
    ...         raise RuntimeError("CUDA out of memory.")
    ...     return "ok"
    >>> result, cfg, events = run_with_fallbacks(attempt, RunConfig(torch.device("cpu"), torch.device("cpu"), 2))
    >>> result, cfg.batch_size, len(events)
    ('ok', 1, 1)
    """
    events: list[str] = []
    while True:
        try:
            return attempt(config), config, events
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            error = exc
        # Drop the traceback: its frames hold the tensors of the failed attempt.
        error.__traceback__ = None
        release_memory(config.device)
        step = next_fallback(config)
        if step is None:
            tried = "; ".join(events) if events else "no fallback left"
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InferenceOutOfMemoryError(
                f"out of memory during inference ({config.describe()}): {detail}. "
                f"Fallbacks tried: {tried}. Free memory, or crop the CT to the region of interest."
            ) from error
        config, message = step
        events.append(message)
        if on_fallback is not None:
            on_fallback(message)
