"""Build ``Testing/Data/test_model/``: a tiny U-Net model package for tests and demos.

The network (UNet3D, channels (8, 16, 32), batch norm, ~85k parameters, ~340 KB) is
trained for 200 Adam steps on the CPU (about a minute of CPU time, one thread) to reproduce
Hounsfield thresholds on the bundled sample CT (OpenKBP case pt_236) resampled to 4 mm:

* ``bone`` (value 1): HU >= 300
* ``soft_tissue`` (value 2): -200 <= HU < 300

It is therefore *not* an anatomical model -- it learns what a threshold does -- but its output
on the sample CT is plausible, so the inference pipeline can be tested end to end on real
data with a real (if trivial) network. Seeds are fixed and one thread is used, so a rerun
gives the same weights on the same machine and library versions.

Usage::

    python Testing/Data/make_test_model.py [--output Testing/Data/test_model] [--steps 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SegDeepLogic import read_volume
from SegDeepLogic.grid import reorient_volume
from SegDeepLogic.inferers import sliding_window_inference
from SegDeepLogic.model_card import ModelCard
from SegDeepLogic.model_package import save_model_package
from SegDeepLogic.networks import UNet3D
from SegDeepLogic.resample import resample_to_spacing

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "test_model"

SPACING_MM = (4.0, 4.0, 4.0)
ORIENTATION = "LPI"  # the sample CT's own axes: i -> left, j -> posterior, k -> inferior
PATCH = (32, 32, 32)
CLIP_HU = (-1024.0, 2000.0)
SUBTRACT, DIVIDE = 488.0, 1512.0  # maps the clip range onto [-1, 1]
BONE_HU, SOFT_HU = 300.0, -200.0
BATCH = 2
BONE_FRACTION = 0.5  # share of training patches centred on bone
ARCH_PARAMS = {
    "in_channels": 1,
    "out_channels": 3,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "norm": "batch",
    "residual": False,
    "dropout": 0.0,
}
LABELS = [
    {"name": "bone", "value": 1, "color": [0.945, 0.839, 0.569], "terminology": "SCT^272673000^Bone"},
    {"name": "soft_tissue", "value": 2, "color": [0.694, 0.478, 0.396], "terminology": "SCT^87784001^Soft tissue"},
]


def threshold_labels(hu: np.ndarray) -> np.ndarray:
    labels = np.zeros(hu.shape, dtype=np.int64)
    labels[(hu >= SOFT_HU) & (hu < BONE_HU)] = 2
    labels[hu >= BONE_HU] = 1
    return labels


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the foreground classes (counters the dominance of air in cross-entropy)."""
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    return 1 - ((2 * intersection + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)).mean()


def train(x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> tuple[UNet3D, list[float]]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = UNet3D(**ARCH_PARAMS)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    bone = np.argwhere(y == 1)
    losses = []
    net.train()
    for _ in range(steps):
        windows = []
        for _ in range(BATCH):
            if rng.random() < BONE_FRACTION:  # centred on a random bone voxel: bone is ~1% of the CT
                centre = bone[rng.integers(len(bone))]
                starts = [int(np.clip(c - p // 2, 0, n - p)) for c, n, p in zip(centre, x.shape, PATCH, strict=True)]
            else:
                starts = [int(rng.integers(0, n - p + 1)) for n, p in zip(x.shape, PATCH, strict=True)]
            windows.append(tuple(slice(s, s + p) for s, p in zip(starts, PATCH, strict=True)))
        xb = torch.stack([xt[w] for w in windows])[:, None]
        yb = torch.stack([yt[w] for w in windows])
        logits = net(xb)
        loss = F.cross_entropy(logits, yb) + dice_loss(logits, yb)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return net.eval(), losses


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="package folder to write (replaced)")
    parser.add_argument("--steps", type=int, default=200, help="Adam steps (batch of 2 patches each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # reproducible sums, and polite on shared machines
    started = time.perf_counter()

    ct = resample_to_spacing(reorient_volume(read_volume(SAMPLE_CT), ORIENTATION), SPACING_MM, default_value=CLIP_HU[0])
    hu = ct.array.astype(np.float32)
    x = (np.clip(hu, *CLIP_HU) - SUBTRACT) / DIVIDE
    y = threshold_labels(hu)
    net, losses = train(x.astype(np.float32), y, args.steps, args.seed)

    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(x)[None, None], net, PATCH, overlap=0.5)
    predicted = logits[0].argmax(0).numpy()
    metrics = {
        "evaluated_on": "the training CT itself (no held-out data); reference = the HU threshold labels on the 4 mm grid",
        "inference": f"sliding window {list(PATCH)}, overlap 0.5, Gaussian blending",
        "dice": {label["name"]: round(dice(predicted == label["value"], y == label["value"]), 4) for label in LABELS},
        "final_training_loss": round(float(np.mean(losses[-20:])), 4),
    }

    command = f"python Testing/Data/make_test_model.py --steps {args.steps} --seed {args.seed}"
    card = ModelCard(
        name="SegDeep test model (HU threshold imitation)",
        version="1.0.0",
        description=(
            "TEST MODEL. A tiny 3D U-Net that imitates Hounsfield thresholds (bone >= 300 HU, soft tissue -200..300 HU) "
            "on CT resampled to 4 mm. It exists to test and demonstrate the SegDeep inference pipeline end to end; it "
            "has no anatomical knowledge."
        ),
        architecture="unet3d",
        architecture_params=ARCH_PARAMS,
        in_channels=1,
        labels=LABELS,
        spacing_ijk_mm=SPACING_MM,
        orientation=ORIENTATION,
        intensity={"clip_hu": list(CLIP_HU), "subtract": SUBTRACT, "divide": DIVIDE},
        patch_size_kji=PATCH,
        training={
            "data": "Resources/SampleData/openkbp_pt_236/ct.nii.gz (one head-and-neck CT, OpenKBP case pt_236), reoriented "
            "to LPI and resampled to 4 mm (linear)",
            "labels": f"HU thresholds on the resampled CT: bone >= {BONE_HU:g} HU, soft tissue {SOFT_HU:g}..{BONE_HU:g} HU",
            "citation": "Babier A. et al., OpenKBP: The open-access knowledge-based planning grand challenge and dataset, "
            "Medical Physics 48(9), 2021, doi:10.1002/mp.14845",
            "split": "none: trained and evaluated on the same single CT",
            "settings": {
                "steps": args.steps,
                "batch_size": BATCH,
                "patch_size_kji": list(PATCH),
                "sampling": f"{BONE_FRACTION:.0%} of patches centred on a random bone voxel, the others uniformly random",
                "optimizer": "Adam, lr 3e-3, cosine decay to 1e-4",
                "loss": "cross-entropy + soft Dice (foreground classes)",
                "seed": args.seed,
                "threads": 1,
            },
            "command": command,
            "code_version": f"SegDeep git {git_revision()}, torch {torch.__version__}",
            "training_time_s": round(time.perf_counter() - started, 1),
        },
        validation_metrics=metrics,
        license="Apache-2.0",
        limitations=(
            "For software tests only; never for clinical or printing decisions. It imitates a threshold, so it "
            "inherits every threshold error (contrast agent, metal, partial volume), and it has seen one CT."
        ),
    )
    path = save_model_package(net, card, args.output, overwrite=True)
    size_kb = sum(p.stat().st_size for p in path.iterdir()) / 1024
    print(f"wrote {path} ({size_kb:.0f} KB) in {time.perf_counter() - started:.0f} s; dice {metrics['dice']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
