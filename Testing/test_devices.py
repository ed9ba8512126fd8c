"""Device selection, precision and the out-of-memory fallbacks (tests run on the CPU only)."""

from __future__ import annotations

import pytest
import torch

from SegDeepLogic import devices
from SegDeepLogic.devices import (
    DeviceError,
    InferenceOutOfMemoryError,
    RunConfig,
    is_out_of_memory,
    next_fallback,
    resolve_device,
    resolve_precision,
    run_with_fallbacks,
)
from SegDeepLogic.errors import SegDeepError

CUDA0 = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# --- selection --------------------------------------------------------------------------------
def test_auto_picks_the_cpu_when_there_is_no_gpu(no_gpu) -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("") == CPU


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == CUDA0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert resolve_device("auto") == CPU


def test_explicit_cuda_without_cuda_is_a_clear_error(no_gpu) -> None:
    with pytest.raises(DeviceError, match=r"'cuda' requested but CUDA is not available.*available: cpu"):
        resolve_device("cuda")
    with pytest.raises(SegDeepError, match="cuda:1"):
        resolve_device("cuda:1")


def test_explicit_cuda_index_beyond_the_device_count_is_an_error(fake_cuda) -> None:
    assert resolve_device("cuda") == CUDA0
    assert resolve_device("CUDA:0") == CUDA0
    with pytest.raises(DeviceError, match=r"only 1 CUDA device"):
        resolve_device("cuda:1")


def test_explicit_mps_without_mps_is_a_clear_error(no_gpu) -> None:
    with pytest.raises(DeviceError, match="Apple MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x"])
def test_unknown_device_names_are_rejected(name: str) -> None:
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


def test_cpu_and_torch_device_objects_are_accepted() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device(torch.device("cpu")) == CPU


# --- precision --------------------------------------------------------------------------------
def test_auto_precision_is_fp32_on_cpu_and_mixed_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision(CPU) == torch.float32
    assert resolve_precision(torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(CUDA0) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(CUDA0) == torch.float16


def test_explicit_precisions_and_a_bad_name() -> None:
    assert resolve_precision(CPU, "bf16") == torch.bfloat16
    assert resolve_precision(CPU, "float16") == torch.float16
    assert resolve_precision(CUDA0, "fp32") == torch.float32
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision(CPU, "int8")


def test_bf16_autocast_on_cpu_runs_a_convolution() -> None:
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.inference_mode(), devices.autocast(CPU, torch.bfloat16):
        y = conv(torch.randn(1, 1, 4, 4, 4))
    assert y.dtype == torch.bfloat16


# --- out-of-memory recognition ------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"),
        RuntimeError("CUDA error: out of memory"),
        MemoryError(),
    ],
)
def test_out_of_memory_errors_of_every_backend_are_recognised(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("out of range"), KeyError("memory")])
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


# --- fallback ladder --------------------------------------------------------------------------
def test_fallback_order_is_smaller_batches_then_cpu_stitching_then_cpu() -> None:
    config = RunConfig(CUDA0, CUDA0, 4, torch.bfloat16)
    steps = []
    while (step := next_fallback(config)) is not None:
        config, message = step
        steps.append((config.device.type, config.stitch_device.type, config.batch_size, config.dtype, message))
    assert [s[:4] for s in steps] == [
        ("cuda", "cuda", 2, torch.bfloat16),
        ("cuda", "cuda", 1, torch.bfloat16),
        ("cuda", "cpu", 1, torch.bfloat16),
        ("cpu", "cpu", 1, torch.float32),
    ]
    assert "retrying with 2" in steps[0][4] and "retrying with 1" in steps[1][4]
    assert "stitched on the CPU" in steps[2][4] and "retrying on the CPU" in steps[3][4]


def fake_gpu_attempt(fails_while):
    """An attempt that raises CUDA OOM while ``fails_while(config)`` holds, and records every config."""
    tried: list[RunConfig] = []

    def attempt(config: RunConfig) -> str:
        tried.append(config)
        if fails_while(config):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return f"done on {config.device} stitching on {config.stitch_device} x{config.batch_size}"

    return attempt, tried


def test_oom_with_batches_falls_back_to_fewer_windows_per_batch() -> None:
    attempt, tried = fake_gpu_attempt(lambda c: c.batch_size > 1)
    result, final, events = run_with_fallbacks(attempt, RunConfig(CUDA0, CUDA0, 4))
    assert result == "done on cuda:0 stitching on cuda:0 x1"
    assert [c.batch_size for c in tried] == [4, 2, 1]
    assert len(events) == 2 and all("windows per batch" in e for e in events)
    assert final.device == CUDA0


def test_oom_at_one_window_falls_back_to_cpu_stitching() -> None:
    attempt, tried = fake_gpu_attempt(lambda c: c.stitch_device.type == "cuda")
    result, final, events = run_with_fallbacks(attempt, RunConfig(CUDA0, CUDA0, 2))
    assert result == "done on cuda:0 stitching on cpu x1"
    assert final.stitch_device == CPU and final.device == CUDA0
    assert events[-1].endswith("retrying with the output stitched on the CPU")
    assert len(tried) == 3


def test_oom_even_with_cpu_stitching_falls_back_to_the_cpu_in_fp32() -> None:
    attempt, _ = fake_gpu_attempt(lambda c: c.device.type == "cuda")
    reported: list[str] = []
    result, final, events = run_with_fallbacks(attempt, RunConfig(CUDA0, CUDA0, 1, torch.float16), on_fallback=reported.append)
    assert result == "done on cpu stitching on cpu x1"
    assert final == RunConfig(CPU, CPU, 1, torch.float32)
    assert (
        events
        == reported
        == [
            "out of memory on cuda:0 with 1 window per batch: retrying with the output stitched on the CPU",
            "out of memory on cuda:0 even with CPU stitching: retrying on the CPU (fp32)",
        ]
    )


def test_oom_on_the_cpu_after_every_fallback_is_a_clear_error() -> None:
    attempt, tried = fake_gpu_attempt(lambda c: True)
    with pytest.raises(
        InferenceOutOfMemoryError, match=r"out of memory during inference.*Fallbacks tried: .*retrying on the CPU"
    ):
        run_with_fallbacks(attempt, RunConfig(CUDA0, CUDA0, 2))
    assert len(tried) == 4


def test_other_errors_are_raised_without_fallback() -> None:
    tried = []

    def attempt(config: RunConfig) -> None:
        tried.append(config)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_fallbacks(attempt, RunConfig(CUDA0, CUDA0, 4))
    assert len(tried) == 1


def test_no_fallback_is_reported_when_the_first_attempt_works() -> None:
    result, final, events = run_with_fallbacks(lambda c: 42, RunConfig(CPU, CPU, 2))
    assert (result, final.batch_size, events) == (42, 2, [])
