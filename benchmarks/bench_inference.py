"""Benchmark the U-Net inference engine.

1. Sliding window: ``SegDeepLogic.inferers.sliding_window_inference`` against
   ``monai.inferers.sliding_window_inference`` with the same network weights, patch size,
   overlap and Gaussian blending (``mode="gaussian", sigma_scale=0.125``), in the same process:
   maximum absolute logit difference (fp32) and the time ratio ours / MONAI on the CPU.
   MONAI runs with its default ``sw_batch_size=1`` and with our batch size; the CPU time of the
   process is reported next to the wall time because the machine may be shared.
2. CPU precision: our inference in fp32 and with bf16 autocast (speed and logit difference).
3. End to end: ``segdeep segment`` (read -> segment -> write .seg.nrrd + JSON summary) on a
   512 x 512 x 300 CT (the sample CT resampled to ~0.98 x 0.98 x 1.28 mm, written to a temporary
   .nii.gz first) in a subprocess: wall time, the time of each stage, and peak resident memory.

Usage::

    python benchmarks/bench_inference.py [--quick] [--threads N] [--skip-e2e]

Results go to ``benchmarks/results/inference.json`` (git-ignored) with the machine's details.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SegDeepLogic import read_volume  # noqa: E402
from SegDeepLogic.inferers import sliding_window_inference  # noqa: E402
from SegDeepLogic.model_package import load_model_package  # noqa: E402
from SegDeepLogic.networks import build_network  # noqa: E402
from SegDeepLogic.segment import AIR_HU, _resample, default_batch_size, model_grid  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
RESULTS = ROOT / "benchmarks" / "results" / "inference.json"


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        ram_gb = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "ram_gib": round(ram_gb, 1) if ram_gb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "simpleitk": sitk.Version_VersionString(),
        "load_average_at_start": list(os.getloadavg()),
    }


def model_input(package, crop: tuple[int, int, int] | None) -> torch.Tensor:
    """The sample CT on the model's grid, normalised as the pipeline does (1, 1, D, H, W)."""
    ct = read_volume(SAMPLE_CT)
    card = package.card
    grid = model_grid(ct, card.orientation, card.spacing_ijk_mm)
    array = sitk.GetArrayFromImage(_resample(sitk.Cast(sitk.ReadImage(str(SAMPLE_CT)), sitk.sitkFloat32), grid, default=AIR_HU))
    lo, hi = card.intensity["clip_hu"]
    array = (np.clip(array, lo, hi) - card.intensity["subtract"]) / card.intensity["divide"]
    if crop is not None:
        centre = [n // 2 for n in array.shape]
        array = array[tuple(slice(c - s // 2, c - s // 2 + s) for c, s in zip(centre, crop, strict=True))]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def timed(fn, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Min wall and min process-CPU seconds over ``repeats`` runs, and the last output."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def compare_with_monai(
    name: str, network: torch.nn.Module, x: torch.Tensor, patch, overlap: float, repeats: int, *, ours_bs1: bool = True
) -> dict:
    from monai.inferers import sliding_window_inference as monai_swi

    network.eval()
    batch = default_batch_size(patch, torch.device("cpu"))

    def monai(bs: int):
        def run():
            with torch.no_grad():
                return monai_swi(x, patch, bs, network, overlap=overlap, mode="gaussian", sigma_scale=0.125)

        return run

    # The pipeline's layout: weights and windows in channels-last-3d (oneDNN's native format).
    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)

    def ours(bs: int, dtype=torch.float32, cl: bool = True):
        net = channels_last if cl else network

        def run():
            if dtype == torch.float32:
                return sliding_window_inference(x, net, patch, overlap=overlap, batch_size=bs, channels_last=cl)
            with torch.autocast("cpu", dtype=dtype):
                return sliding_window_inference(x, net, patch, overlap=overlap, batch_size=bs, channels_last=cl)

        return run

    runs = {"monai_bs1": monai(1), f"monai_bs{batch}": monai(batch), f"ours_bs{batch}": ours(batch)}
    runs[f"ours_bs{batch}_contiguous"] = ours(batch, cl=False)
    if ours_bs1:
        runs["ours_bs1_contiguous"] = ours(1, cl=False)
    runs[f"ours_bs{batch}_bf16"] = ours(batch, torch.bfloat16)
    ours(batch)()  # warm-up (oneDNN primitive caches)
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    outputs = {}
    for _ in range(repeats):  # interleaved, so a burst of load hits every variant alike
        for key, fn in runs.items():
            wall, c, out = timed(fn, 1)
            times[key].append(wall)
            cpu[key].append(c)
            outputs[key] = out
    reference = outputs["monai_bs1"]
    n_windows = None
    from SegDeepLogic.inferers import window_slices

    n_windows = len(window_slices([max(a, b) for a, b in zip(x.shape[2:], patch, strict=True)], patch, overlap))
    result = {
        "case": name,
        "input_shape_dhw": list(x.shape[2:]),
        "patch_size_dhw": list(patch),
        "overlap": overlap,
        "windows": n_windows,
        "our_batch_size": batch,
        "repeats": repeats,
        "wall_s_min": {k: round(min(v), 3) for k, v in times.items()},
        "cpu_s_min": {k: round(min(v), 3) for k, v in cpu.items()},
        "max_abs_logit_diff_vs_monai_bs1": {
            k: float((o.float() - reference).abs().max()) for k, o in outputs.items() if k != "monai_bs1"
        },
    }
    ob = f"ours_bs{batch}"
    result["ratio_ours_over_monai_default_wall"] = round(min(times[ob]) / min(times["monai_bs1"]), 3)
    result["ratio_ours_over_monai_default_cpu"] = round(min(cpu[ob]) / min(cpu["monai_bs1"]), 3)
    result["ratio_ours_over_monai_same_batch_wall"] = round(min(times[ob]) / min(times[f"monai_bs{batch}"]), 3)
    if ours_bs1:
        result["ratio_ours_bs1_contiguous_over_monai_bs1_wall"] = round(
            min(times["ours_bs1_contiguous"]) / min(times["monai_bs1"]), 3
        )
    result["ratio_channels_last_over_contiguous_cpu"] = round(min(cpu[ob]) / min(cpu[f"{ob}_contiguous"]), 3)
    result["ratio_bf16_over_fp32_wall"] = round(min(times[f"{ob}_bf16"]) / min(times[ob]), 3)
    result["ratio_bf16_over_fp32_cpu"] = round(min(cpu[f"{ob}_bf16"]) / min(cpu[ob]), 3)
    result["cpu_bf16_faster"] = result["ratio_bf16_over_fp32_cpu"] < 0.95
    return result


def make_big_ct(path: Path, size_ijk=(512, 512, 300)) -> dict:
    ct = sitk.ReadImage(str(SAMPLE_CT))
    extent = np.array(ct.GetSize()) * np.array(ct.GetSpacing())
    spacing = extent / np.array(size_ijk)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in size_ijk])
    f.SetOutputSpacing(spacing.tolist())
    f.SetOutputOrigin(ct.GetOrigin())
    f.SetOutputDirection(ct.GetDirection())
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(-1024)
    f.SetOutputPixelType(sitk.sitkInt16)
    big = f.Execute(ct)
    sitk.WriteImage(big, str(path), useCompression=True)
    return {
        "size_ijk": list(size_ijk),
        "spacing_mm": [round(s, 4) for s in spacing],
        "file_mb": round(path.stat().st_size / 2**20, 1),
    }


def end_to_end(tmp: Path, threads: int | None, extra: list[str], model: Path = TEST_MODEL) -> dict:
    ct_path = tmp / "ct_512x512x300.nii.gz"
    info = make_big_ct(ct_path) if not ct_path.exists() else {}
    out = tmp / f"seg_{threads or 'default'}.seg.nrrd"
    summary = tmp / f"summary_{threads or 'default'}.json"
    code = (
        "import resource, sys, time; t = time.perf_counter(); from SegDeepLogic.cli import main; "
        "rc = main(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
        "print('WALL_S', time.perf_counter() - t); sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, "segment", str(ct_path), "-o", str(out), "--model", str(model)]
    cmd += ["--json", str(summary), "--no-progress", "--overwrite", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"segdeep segment failed:\n{proc.stderr}")
    values = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("PEAK_RSS_KB", "WALL_S")))
    report = json.loads(summary.read_text())
    timings = report["timings_s"]
    return {
        **info,
        "model": report["parameters"]["model"]["name"],
        "command": f"segdeep segment CT -o SEG.seg.nrrd --model {model.relative_to(ROOT)} --json S.json"
        + (f" --threads {threads}" if threads else "")
        + (" " + " ".join(extra) if extra else ""),
        "wall_s_process": round(wall, 2),
        "wall_s_after_imports": round(float(values["WALL_S"]), 2),
        "peak_rss_mb": round(int(values["PEAK_RSS_KB"]) / 1024, 1),
        "timings_s": timings,
        "split": {
            "read": timings["read"],
            "resampling (reorient + resample + resample-back)": round(
                timings["reorient"] + timings["resample"] + timings["resample-back"], 3
            ),
            "network": timings["network"],
            "postprocess + uncertainty + refine": round(timings["postprocess"] + timings["uncertainty"] + timings["refine"], 3),
            "write": timings["write"],
        },
        "model_grid": report["parameters"]["model_grid"]["size_ijk"],
        "batch_size": report["parameters"]["batch_size"],
        "num_threads": report["parameters"]["num_threads"],
        "device": report["device"],
        "fallbacks": report["fallbacks"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat, one end-to-end run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the 512x512x300 end-to-end run")
    parser.add_argument("--skip-sliding", action="store_true", help="skip the comparison with MONAI")
    parser.add_argument("--e2e-model", default=None, help="model package for the end-to-end run (default: the test model)")
    parser.add_argument("--merge", action="store_true", help="update the existing JSON with this run's sections")
    parser.add_argument(
        "--e2e-args", default="", help="extra segdeep segment options for the end-to-end run, e.g. '--overlap 0.25'"
    )
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if args.merge and out.exists() else {}
    results.update({"machine_merged_run" if "machine" in results else "machine": machine_info(), "quick": args.quick})
    repeats = 1 if args.quick else 2

    package = load_model_package(TEST_MODEL)
    x = model_input(package, (48, 64, 64) if args.quick else None) if not args.skip_sliding else None
    cases = [("test_model UNet3D [8,16,32], patch 32^3", package.network, x, tuple(package.card.patch_size_kji), True)]
    if not args.quick and not args.skip_sliding:
        torch.manual_seed(0)
        bigger = build_network("unet3d", {"in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128]})
        crop = model_input(package, (96, 96, 96))
        cases.append(("random UNet3D [16,32,64,128], patch 64^3", bigger, crop, (64, 64, 64), False))
    if not args.skip_sliding:
        results["sliding_window"] = []
    for name, network, inp, patch, with_bs1 in [] if args.skip_sliding else cases:
        r = compare_with_monai(name, network, inp, patch, 0.5, repeats, ours_bs1=with_bs1)
        results["sliding_window"].append(r)
        ours = f"ours_bs{r['our_batch_size']}"
        print(
            f"[sliding window] {name} on {r['input_shape_dhw']} ({r['windows']} windows): "
            f"max |ours - MONAI| = {r['max_abs_logit_diff_vs_monai_bs1'][ours]:.2e}; "
            f"wall {ours} {r['wall_s_min'][ours]:.2f} s vs MONAI(bs1) {r['wall_s_min']['monai_bs1']:.2f} s "
            f"-> ratio {r['ratio_ours_over_monai_default_wall']} (cpu-time ratio {r['ratio_ours_over_monai_default_cpu']}; "
            f"vs MONAI at the same batch {r['ratio_ours_over_monai_same_batch_wall']}); bf16/fp32 {r['ratio_bf16_over_fp32_wall']}",
            flush=True,
        )

    if not args.skip_e2e:
        with tempfile.TemporaryDirectory(prefix="segdeep_bench_") as tmp:
            models = [Path(args.e2e_model).resolve()] if args.e2e_model else [TEST_MODEL]
            runs = [(m, None) for m in models] if args.quick else [(m, t) for m in models for t in (None, 1)]
            key = "end_to_end" if not args.e2e_model else f"end_to_end_{Path(args.e2e_model).name}"
            if args.e2e_args:
                key += "_" + "_".join(a.lstrip("-") for a in args.e2e_args.split())
            results[key] = []
            for model, threads in runs:
                e2e = end_to_end(Path(tmp), threads or args.threads, args.e2e_args.split(), model)
                results[key].append(e2e)
                print(
                    f"[end to end] {e2e.get('size_ijk', [512, 512, 300])} CT, threads {e2e['num_threads']}: "
                    f"{e2e['wall_s_process']:.1f} s (process), peak RSS {e2e['peak_rss_mb']:.0f} MB; split {e2e['split']}",
                    flush=True,
                )
    results["machine_merged_run" if "machine_merged_run" in results else "machine"]["load_average_at_end"] = list(os.getloadavg())
    results["max_rss_mb_benchmark_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
