"""Benchmark the U-Net inference engine.

1. Sliding window: ``SegDeepLogic.inferers.sliding_window_inference`` against
   ``monai.inferers.sliding_window_inference`` at **equal settings**: the same network object and
   weights, patch size, overlap (0.5), Gaussian blending (``mode="gaussian", sigma_scale=0.125``),
   ``sw_batch_size`` (ours: ``default_batch_size``, given to MONAI too), memory format (both
   channels-last-3d -- the network converted and every batch of windows converted before the
   network, as the pipeline does -- or both contiguous), precision (fp32, or bf16 autocast on
   both) and warm-up (one untimed run of every variant), both under ``torch.inference_mode``, in
   the same process, interleaved rounds, medians. For each side the time spent inside the
   network is measured with the same wrapper, so ``total - network`` shows each side's own
   overhead; ``--profile`` adds a ``torch.profiler`` op table of one run of each side.
   Cases: the test model on the sample CT's model grid (32³ patch), a random UNet3D
   [16, 32, 64, 128] with a 64³ patch on a 96³ crop, and the bundled ``headneck-ct`` model
   (64×80×80 patch) on a crop holding 2×2×2 windows; ``no_network`` replaces the network by a
   free copy on the test model's geometry (245 windows of 32³), timing the sliding window alone. ``--monai-default`` adds MONAI at its
   default ``sw_batch_size=1`` (what a user gets from MONAI's defaults; not an equal-settings ratio).
2. End to end: ``segdeep segment`` (read -> segment -> write .seg.nrrd + JSON summary) on a
   512 x 512 x 300 CT (the sample CT resampled to ~0.98 x 0.98 x 1.28 mm, written to a temporary
   .nii.gz first) in a subprocess: wall time, the time of each stage, and peak resident memory;
   ``--overlap`` / ``--precision`` are passed to ``segdeep segment`` and recorded (default: the
   command's own defaults).

Usage::

    python benchmarks/bench_inference.py [--quick] [--cases test_model unet64 headneck] [--profile]
    python benchmarks/bench_inference.py --skip-sliding --e2e-model Resources/Models/headneck-ct --overlap 0.25

Results, with the machine, versions, settings and load, go to ``benchmarks/results/``
(``sliding_window.json``; ``end_to_end_<model>[_<options>].json``), or to
``benchmarks/results/quick/`` with ``--quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
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

from _machine import RESULTS_DIR, Record  # noqa: E402

from SegDeepLogic import read_volume  # noqa: E402
from SegDeepLogic.grid import model_grid  # noqa: E402
from SegDeepLogic.inferers import sliding_window_inference, window_slices  # noqa: E402
from SegDeepLogic.model_package import load_model_package  # noqa: E402
from SegDeepLogic.networks import build_network  # noqa: E402
from SegDeepLogic.segment import AIR_HU, _resample, default_batch_size  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
BUNDLED_MODEL = ROOT / "Resources" / "Models" / "headneck-ct"


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


class _Timed:
    """Wraps a predictor and adds up the wall time spent inside it (the network's share)."""

    def __init__(self, fn) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(windows)
        self.seconds += time.perf_counter() - t0
        return out


def _predictor(network: torch.nn.Module, channels_last: bool):
    """The network; with ``channels_last`` the windows are converted to channels-last-3d first.

    Ours converts its windows itself (``channels_last=True``); MONAI gets this conversion in its
    predictor, so both sides feed the same (converted) network the same layout.
    """
    if not channels_last:
        return network
    return lambda w: network(w.contiguous(memory_format=torch.channels_last_3d))


def compare_with_monai(
    name: str,
    network: torch.nn.Module,
    x: torch.Tensor,
    patch,
    overlap: float,
    repeats: int,
    *,
    batch: int,
    formats: tuple[str, ...] = ("channels_last", "contiguous"),
    bf16: bool = True,
    monai_default: bool = False,
) -> dict:
    """Ours vs MONAI at equal settings: same batch size, memory format, precision and warm-up.

    Every variant runs once untimed (warm-up: oneDNN primitive caches, first allocations), then
    ``repeats`` interleaved rounds (order reversed every other round); medians are reported. Both
    sides run under ``torch.inference_mode``. The time spent inside the network (``network_s``)
    is measured with the same wrapper on both sides, so ``total - network`` is each side's own
    overhead (window gathering, blending, normalisation).
    """
    from monai.inferers import sliding_window_inference as monai_swi

    network.eval()
    nets = {"contiguous": network, "channels_last": copy.deepcopy(network).to(memory_format=torch.channels_last_3d)}

    def variant(side: str, bs: int, fmt: str, dtype: torch.dtype):
        net = nets[fmt]
        cl = fmt == "channels_last"

        def run() -> tuple[torch.Tensor, float]:
            ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            if side == "ours":
                predictor = _Timed(net)
                with ctx:
                    out = sliding_window_inference(x, predictor, patch, overlap=overlap, batch_size=bs, channels_last=cl)
            else:
                predictor = _Timed(_predictor(net, cl))
                with torch.inference_mode(), ctx:
                    out = monai_swi(x, patch, bs, predictor, overlap=overlap, mode="gaussian", sigma_scale=0.125)
            return out, predictor.seconds

        return run

    runs = {}
    for fmt in formats:
        for side in ("ours", "monai"):
            runs[f"{side}_{fmt}_bs{batch}_fp32"] = variant(side, batch, fmt, torch.float32)
    if bf16:
        for side in ("ours", "monai"):
            runs[f"{side}_{formats[0]}_bs{batch}_bf16"] = variant(side, batch, formats[0], torch.bfloat16)
    if monai_default:  # what a user gets from MONAI's defaults (sw_batch_size=1): not an equal-settings ratio
        runs["monai_contiguous_bs1_fp32"] = variant("monai", 1, "contiguous", torch.float32)
    for fn in runs.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    net_s: dict[str, list[float]] = {k: [] for k in runs}
    outputs = {}
    for r in range(repeats):
        for key in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            out, inside = runs[key]()
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
            net_s[key].append(inside)
            outputs[key] = out
    reference = outputs[f"monai_{formats[-1]}_bs{batch}_fp32"]
    n_windows = len(window_slices([max(a, b) for a, b in zip(x.shape[2:], patch, strict=True)], patch, overlap))

    def med(d: dict[str, list[float]], k: str) -> float:
        return statistics.median(d[k])

    result = {
        "case": name,
        "input_shape_dhw": list(x.shape[2:]),
        "patch_size_dhw": list(patch),
        "overlap": overlap,
        "blending": "gaussian, sigma_scale 0.125 (both)",
        "windows": n_windows,
        "sw_batch_size": batch,
        "repeats": repeats,
        "wall_s_median": {k: round(med(wall, k), 3) for k in runs},
        "wall_s_all": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "cpu_s_median": {k: round(med(cpu, k), 3) for k in runs},
        "network_s_median": {k: round(med(net_s, k), 3) for k in runs},
        "overhead_s_median": {
            k: round(statistics.median(w - n for w, n in zip(wall[k], net_s[k], strict=True)), 3) for k in runs
        },
        "max_abs_logit_diff_vs_monai_fp32": {
            k: float((o.float() - reference).abs().max())
            for k, o in outputs.items()
            if not k.startswith(f"monai_{formats[-1]}_bs{batch}_fp32")
        },
        "ratios_ours_over_monai_equal_settings": {},
    }
    for key in runs:
        if key.startswith("ours_"):
            other = "monai_" + key[len("ours_") :]
            result["ratios_ours_over_monai_equal_settings"][key[len("ours_") :]] = {
                "wall": round(med(wall, key) / med(wall, other), 3),
                "cpu": round(med(cpu, key) / med(cpu, other), 3),
                "network_share_ours": round(med(net_s, key) / med(wall, key), 3),
                "network_share_monai": round(med(net_s, other) / med(wall, other), 3),
            }
    if monai_default:
        key = f"ours_{formats[0]}_bs{batch}_fp32"
        result["ratio_ours_over_monai_default_bs1_wall"] = round(med(wall, key) / med(wall, "monai_contiguous_bs1_fp32"), 3)
    if bf16:
        key = f"ours_{formats[0]}_bs{batch}"
        result["ratio_ours_bf16_over_ours_fp32_wall"] = round(med(wall, f"{key}_bf16") / med(wall, f"{key}_fp32"), 3)
    return result


def profile_ops(network: torch.nn.Module, x: torch.Tensor, patch, overlap: float, batch: int, top: int = 12) -> dict:
    """One run of each side (channels-last, fp32) under ``torch.profiler``: the ops that take the time."""
    from monai.inferers import sliding_window_inference as monai_swi
    from torch.profiler import ProfilerActivity, profile

    net = copy.deepcopy(network).eval().to(memory_format=torch.channels_last_3d)
    sides = {
        "ours": lambda: sliding_window_inference(x, net, patch, overlap=overlap, batch_size=batch, channels_last=True),
        "monai": lambda: monai_swi(x, patch, batch, _predictor(net, True), overlap=overlap, mode="gaussian", sigma_scale=0.125),
    }
    out = {}
    for side, fn in sides.items():
        with torch.inference_mode():
            fn()  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        out[side] = {
            "self_cpu_s_total": round(total / 1e6, 3),
            "top_ops": [
                {
                    "op": e.key,
                    "calls": e.count,
                    "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
                    "share": round(e.self_cpu_time_total / total, 3),
                }
                for e in events[:top]
            ],
        }
    return out


def _case_test_model(quick: bool):
    package = load_model_package(TEST_MODEL)
    x = model_input(package, (48, 64, 64) if quick else None)
    return "test model UNet3D [8,16,32], patch 32^3", package.network, x, tuple(package.card.patch_size_kji)


def _case_unet64(quick: bool):
    torch.manual_seed(0)
    net = build_network("unet3d", {"in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128]})
    x = model_input(load_model_package(TEST_MODEL), (64, 64, 96) if quick else (96, 96, 96))
    return "random UNet3D [16,32,64,128], patch 64^3", net, x, (64, 64, 64)


def _case_headneck(quick: bool):
    package = load_model_package(BUNDLED_MODEL)
    patch = tuple(package.card.patch_size_kji)
    crop = tuple(p if quick else p + p // 2 for p in patch)  # quick: 1 window; else 2 x 2 x 2 windows
    return f"bundled headneck-ct, patch {patch}", package.network, model_input(package, crop), patch


class _NoNetwork(torch.nn.Module):
    """Stands in for a network that costs nothing: three copies of the window as the output channels."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return windows.expand(-1, 3, -1, -1, -1).clone()


def _case_no_network(quick: bool):
    package = load_model_package(TEST_MODEL)
    x = model_input(package, (48, 64, 64) if quick else None)
    return "no network (the sliding window's own cost), test model geometry", _NoNetwork(), x, (32, 32, 32)


CASES = {
    "test_model": _case_test_model,
    "unet64": _case_unet64,
    "headneck": _case_headneck,
    "no_network": _case_no_network,
}


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
        "overlap": report["parameters"]["overlap"],
        "precision": report.get("precision"),
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
    parser.add_argument("--quick", action="store_true", help="small inputs, one round, one end-to-end run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 3, 1 with --quick)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the 512x512x300 end-to-end run")
    parser.add_argument("--skip-sliding", action="store_true", help="skip the comparison with MONAI")
    parser.add_argument(
        "--cases", nargs="+", default=list(CASES), choices=list(CASES), help="sliding-window cases (default: all)"
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["channels_last", "contiguous"],
        choices=["channels_last", "contiguous"],
        help="memory formats to compare (both sides use each; bf16 uses the first)",
    )
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 variants")
    parser.add_argument("--name", default="sliding_window", help="result file name for the sliding-window part")
    parser.add_argument("--monai-default", action="store_true", help="also time MONAI at its default sw_batch_size=1")
    parser.add_argument("--profile", action="store_true", help="torch.profiler op table of one run of each side")
    parser.add_argument("--e2e-model", default=None, help="model package for the end-to-end run (default: the test model)")
    parser.add_argument("--overlap", type=float, default=None, help="segdeep segment --overlap (default: its default)")
    parser.add_argument("--precision", default=None, help="segdeep segment --precision (default: its default)")
    parser.add_argument("--e2e-threads", nargs="+", type=int, default=None, help="thread counts for the e2e runs")
    parser.add_argument("--e2e-args", default="", help="other segdeep segment options for the end-to-end run")
    parser.add_argument("--out-dir", type=Path, default=None, help="result folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    repeats = args.repeats or (1 if args.quick else 3)

    if not args.skip_sliding:
        record = Record(
            "sliding-window inference: SegDeepLogic.inferers vs monai.inferers at equal settings",
            {
                "device": "cpu",
                "overlap": 0.5,
                "mode": "gaussian, sigma_scale 0.125",
                "equal_settings": "same network object and weights, same sw_batch_size (ours: default_batch_size), same "
                "memory format (channels_last_3d network + windows converted to it, or both contiguous), same "
                "precision (fp32, or bf16 autocast), both under torch.inference_mode, both warmed up once",
                "rounds": repeats,
                "statistic": "median over interleaved rounds (order reversed every other round)",
                "torch_threads": torch.get_num_threads(),
                "cases": args.cases,
                "formats": args.formats,
                "bf16": not args.no_bf16,
            },
        )
        results: dict = {"sliding_window": [], "profiles": {}}
        for case in args.cases:
            name, network, x, patch = CASES[case](args.quick)
            batch = default_batch_size(patch, torch.device("cpu"))
            r = compare_with_monai(
                name,
                network,
                x,
                patch,
                0.5,
                repeats,
                batch=batch,
                formats=tuple(args.formats),
                bf16=not args.no_bf16,
                monai_default=args.monai_default,
            )
            results["sliding_window"].append(r)
            ratios = r["ratios_ours_over_monai_equal_settings"]
            print(f"[sliding window] {name} on {r['input_shape_dhw']} ({r['windows']} windows, sw_batch_size {batch}):")
            for variant, v in ratios.items():
                print(
                    f"    {variant:<28} ours {r['wall_s_median']['ours_' + variant]:7.2f} s "
                    f"(network {r['network_s_median']['ours_' + variant]:.2f}) vs MONAI "
                    f"{r['wall_s_median']['monai_' + variant]:7.2f} s (network {r['network_s_median']['monai_' + variant]:.2f})"
                    f" -> {v['wall']:.3f} (CPU {v['cpu']:.3f}); max |ours - MONAI fp32| "
                    f"{r['max_abs_logit_diff_vs_monai_fp32']['ours_' + variant]:.1e}",
                    flush=True,
                )
            if args.profile:
                results["profiles"][case] = profile_ops(network, x, patch, 0.5, batch)
                for side, p in results["profiles"][case].items():
                    ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in p["top_ops"][:6])
                    print(f"    profile {side}: {p['self_cpu_s_total']:.2f} s self CPU: {ops}", flush=True)
        path = record.write(out_dir / f"{args.name}.json", results)
        print(f"wrote {path}")

    if not args.skip_e2e:
        model = Path(args.e2e_model).resolve() if args.e2e_model else TEST_MODEL
        extra = args.e2e_args.split()
        if args.overlap is not None:
            extra += ["--overlap", str(args.overlap)]
        if args.precision is not None:
            extra += ["--precision", args.precision]
        threads = args.e2e_threads or ([args.threads] if args.threads else [0])
        record = Record(
            "end to end: segdeep segment of a 512x512x300 CT (read -> segment -> write), in a subprocess",
            {
                "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
                "overlap_option": args.overlap,
                "precision_option": args.precision,
                "other_options": args.e2e_args,
                "threads": threads,
            },
        )
        entries = []
        with tempfile.TemporaryDirectory(prefix="segdeep_bench_") as tmp:
            for t in threads:
                e2e = end_to_end(Path(tmp), t or None, extra, model)
                entries.append(e2e)
                print(
                    f"[end to end] {model.name}, overlap {e2e['overlap']}, precision {e2e['precision']}, threads "
                    f"{e2e['num_threads']}: {e2e['wall_s_process']:.1f} s (process), peak RSS {e2e['peak_rss_mb']:.0f} MB; "
                    f"split {e2e['split']}",
                    flush=True,
                )
        tag = "_".join([model.name, *(a.lstrip("-").replace(".", "") for a in extra)])
        path = record.write(out_dir / f"end_to_end_{tag}.json", {"runs": entries})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
