"""Train a 3D U-Net on CT/label pairs with partial labels and write a model package.

:func:`train` runs the whole thing from a :class:`TrainConfig`: it preloads every case at the
model spacing (:mod:`.data`), samples augmented patches with foreground oversampling
(:mod:`.augment`), optimises the partial-label Dice + cross-entropy (:mod:`.losses`) with AdamW
and a polynomial learning-rate decay, validates at intervals with the sliding-window inferer,
checkpoints (network, optimiser, step, RNG states, history) so that ``resume=True`` continues
exactly where it stopped, and finally writes a model package with the best validation weights.

Everything random flows from ``seed`` through one numpy ``Generator`` and torch's CPU
generator, both saved in checkpoints; patches are built in the main process, so a resumed run
reproduces the uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from ..devices import autocast, precision_name, resolve_device, resolve_precision
from ..errors import SegDeepError
from ..inferers import sliding_window_inference
from ..model_card import ModelCard, load_model_card
from ..model_input import IntensityNormalization
from ..model_package import load_model_package, save_model_package
from ..networks import build_network
from ..plausibility import reference_statistics
from ..progress import CancelToken
from ..segmentation_io import default_color
from .augment import (
    augment_intensity,
    class_locations,
    extract_patch,
    flip_left_right,
    lateral_pairs,
    random_rotation_scale,
    sample_center,
)
from .data import PreparedCase, find_cases, load_cases
from .losses import marginal_dice_ce_loss, median_frequency_weights
from .mean_teacher import align_teacher, consistency_loss, ema_update, make_unlabeled_batch, sigmoid_rampup

__all__ = [
    "DEFAULT_LABELS",
    "TrainConfig",
    "forgetting_guard",
    "initialise_from_package",
    "package_settings",
    "train",
    "validate",
]

# name, RGB colour (0-1), terminology "scheme^code^meaning" (SNOMED CT), following 3D Slicer's
# conventions for anatomical structures.
DEFAULT_LABELS: list[dict[str, Any]] = [
    {"name": "mandible", "color": [0.890, 0.855, 0.788], "terminology": "SCT^91609006^Mandible"},
    {"name": "brainstem", "color": [0.784, 0.541, 0.498], "terminology": "SCT^15926001^Brainstem"},
    {"name": "spinal_cord", "color": [0.961, 0.906, 0.384], "terminology": "SCT^2748008^Spinal cord"},
    {"name": "parotid_left", "color": [0.333, 0.737, 0.373], "terminology": "SCT^45289007^Parotid gland (left)"},
    {"name": "parotid_right", "color": [0.216, 0.494, 0.722], "terminology": "SCT^45289007^Parotid gland (right)"},
    {"name": "esophagus", "color": [0.827, 0.671, 0.557], "terminology": "SCT^32849002^Esophagus"},
    {"name": "larynx", "color": [0.588, 0.306, 0.663], "terminology": "SCT^4596009^Larynx"},
]

OPENKBP_DATA = {
    "name": "OpenKBP",
    "description": "Head-and-neck radiotherapy CTs with clinical organ-at-risk contours (OpenKBP grand challenge), "
    "derived from The Cancer Imaging Archive head-and-neck collections; 128x128x128 crops around the treated "
    "region, typically 3.9x3.9x2.5 mm.",
    "citation": 'A. Babier et al., "OpenKBP: The open-access knowledge-based planning grand challenge and dataset", '
    "Medical Physics 48:5549-5561, 2021",
    "source": "https://github.com/ababier/open-kbp",
    "license": "MIT (dataset repository); CTs from TCIA collections under their data-use terms",
}

OPENKBP_LIMITATIONS = [
    "Trained at a coarse resolution (3.9 x 3.9 x 2.5 mm voxels): boundaries are blocky and thin parts are "
    "approximate (the native-resolution refinement can sharpen bone boundaries; check its effect on validation).",
    "Trained on about 170 head-and-neck radiotherapy CTs (OpenKBP, cropped to the treated region) with a short CPU "
    "schedule (training.steps and training.minutes in this card): well below a converged model.",
    "Clinical radiotherapy contours as ground truth: teeth included in some cases and not in others; oesophagus and "
    "larynx contoured in only a third to a half of the cases.",
    "Head-and-neck CT only: not for other body regions, MRI, cone-beam CT or children; not a medical device.",
]

log = logging.getLogger("segdeep.train")


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train` (all JSON-serialisable; recorded in checkpoints and the card).

    Attributes
    ----------
    train_data : list of str
        Data folders (OpenKBP layout) or CSV/JSON case lists for training.
    validation_data : list of str
        The same for validation (model selection). Empty: no validation, last weights shipped.
    output : str
        Model package folder to write.
    work_dir : str
        Checkpoints, log file and history.
    labels : list of dict
        ``{"name", "color", "terminology"}`` per structure; label values are 1, 2, ... in order.
    spacing_ijk_mm, orientation
        Model grid: voxel size (i, j, k) and DICOM orientation code of the array axes.
    patch_size_kji, batch_size
        Training patch (divisible by the network's downsampling) and patches per step.
    iterations : int
        Optimiser steps in total (the learning-rate schedule spans them).
    max_minutes : float or None
        Stop early (checkpoint + package) once training took this long.
    stop_at_step : int or None
        Stop (checkpoint + package) after this step without changing the learning-rate
        schedule, which ``iterations`` sets: replays a run that was interrupted by hand.
    ce_weighting : str
        ``"none"`` or ``"median-frequency"``: cross-entropy class weights by median-frequency
        balancing over the training labels (:func:`.losses.median_frequency_weights`).
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"mps"`` (:func:`SegDeepLogic.devices.resolve_device`).
    precision : str
        ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16 on CUDA GPUs that support it,
        else fp16 with loss scaling; fp16 on MPS; fp32 on the CPU). Mixed precision autocasts
        the forward pass; weights, optimiser state and checkpoints stay float32.
    init_from : str or None
        A model package to start from (fine-tuning): every weight is copied, and the output
        layer channel by channel for the structures whose names the package has; the other
        output channels keep their fresh initialisation. The network architecture must match
        the package's (:func:`initialise_from_package`); the card records what was inherited.
    guard_validation_data : list of str
        Fine-tuning's guard against forgetting: with ``init_from``, every case of these data
        (default: ``validation_data``) is validated with the initial weights before the first
        step (the package's network on the label set trained: the package itself when the
        label set is the package's, as in the correction loop) and with the shipped weights at
        the end; both, and the change per structure, are
        logged and recorded in ``history.json`` and the card (``training.forgetting_guard``).
    unlabeled_data : list of str
        Data folders or case lists of CTs without labels (their label files, if any, are
        ignored). Non-empty: semi-supervised training with a mean teacher
        (:mod:`.mean_teacher`): an EMA teacher of the network gives consistency targets on
        ``unlabeled_batch_size`` unlabelled patches per step; validation, model selection and
        the package use the **teacher**'s weights (the student's validation Dice is recorded too).
    consistency_weight : float
        Weight of the consistency term once ramped up.
    consistency_rampup : int or None
        Steps of the sigmoid ramp-up of that weight (None: a quarter of ``iterations``).
    ema_decay : float
        Decay of the teacher's exponential moving average of the student's weights.
    unlabeled_batch_size : int or None
        Unlabelled patches per step (None: ``batch_size``).
    """

    train_data: list[str]
    validation_data: list[str] = dataclasses.field(default_factory=list)
    output: str = "model"
    work_dir: str = "training_run"
    model_name: str = "headneck-ct"
    model_version: str = "1.0.0"
    labels: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: [dict(d) for d in DEFAULT_LABELS])
    spacing_ijk_mm: tuple[float, float, float] = (3.906, 3.906, 2.5)
    orientation: str = "LPI"
    clip_hu: tuple[float, float] = (-1000.0, 2000.0)
    subtract: float = 40.0
    divide: float = 400.0
    architecture: str = "unet3d"
    architecture_params: dict[str, Any] = dataclasses.field(default_factory=lambda: {"channels": [16, 32, 64, 128]})
    patch_size_kji: tuple[int, int, int] = (64, 80, 80)
    batch_size: int = 2
    iterations: int = 2000
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    foreground_fraction: float = 0.5
    ce_weighting: str = "none"
    p_spatial: float = 0.5
    p_flip: float = 0.5
    seed: int = 0
    val_every: int = 250
    val_cases: int = 6
    val_overlap: float = 0.25
    checkpoint_every: int = 50
    log_every: int = 10
    threads: int = 2
    precision: str = "fp32"
    device: str = "cpu"
    init_from: str | None = None
    guard_validation_data: list[str] = dataclasses.field(default_factory=list)
    unlabeled_data: list[str] = dataclasses.field(default_factory=list)
    consistency_weight: float = 1.0
    consistency_rampup: int | None = None
    ema_decay: float = 0.99
    unlabeled_batch_size: int | None = None
    cache_dir: str | None = None
    max_minutes: float | None = None
    stop_at_step: int | None = None
    data_info: dict[str, Any] | None = None
    limitations: list[str] = dataclasses.field(default_factory=list)
    description: str = ""

    @property
    def structures(self) -> list[str]:
        return [d["name"] for d in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def _normalization(cfg: TrainConfig) -> IntensityNormalization:
    """The network input of the model being trained: the normalisation inference applies (its card's ``intensity``)."""
    return IntensityNormalization(float(cfg.clip_hu[0]), float(cfg.clip_hu[1]), float(cfg.subtract), float(cfg.divide))


def _normalise(x: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    return _normalization(cfg).apply(x)


def _lateral_axis(orientation: str) -> int:
    """Array axis (0 = k, 1 = j, 2 = i) along which the patient's left-right runs."""
    code = orientation.upper()
    for t, letter in enumerate(code):
        if letter in "LR":
            return 2 - t
    raise SegDeepError(f"orientation {orientation!r} has no left-right axis")


def make_batch(
    cases: Sequence[PreparedCase],
    locations: Sequence[list[np.ndarray]],
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented batch: image (B, 1, D, H, W), target (B, D, H, W) int64, available (B, C)."""
    spacing_kji = tuple(cfg.spacing_ijk_mm[::-1])
    pairs = lateral_pairs(cfg.structures)
    axis = _lateral_axis(cfg.orientation)
    images, targets, avails = [], [], []
    for _ in range(cfg.batch_size):
        n = int(rng.integers(len(cases)))
        case = cases[n]
        center = sample_center(case.image.shape, locations[n], case.available, rng, cfg.foreground_fraction)
        transform = random_rotation_scale(rng) if rng.random() < cfg.p_spatial else None
        img, lab = extract_patch(case.image, case.labels, center, cfg.patch_size_kji, spacing_kji, transform)
        avail = case.available
        if pairs is not None and rng.random() < cfg.p_flip:
            img, lab, avail = flip_left_right(img, lab, avail, pairs, axis=axis)
        img = augment_intensity(_normalise(img, cfg), rng)
        images.append(img)
        targets.append(lab)
        avails.append(avail)
    return (
        torch.from_numpy(np.stack(images)[:, None]),
        torch.from_numpy(np.stack(targets).astype(np.int64)),
        torch.from_numpy(np.stack(avails)),
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def predict_case(
    network: torch.nn.Module,
    case: PreparedCase,
    cfg: TrainConfig,
    overlap: float | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Label map (argmax) of a prepared case on the model grid, with the sliding-window inferer.

    ``device`` and ``dtype`` (the autocast precision) default to where the network's weights
    are and to ``cfg.precision`` resolved for that device.
    """
    if device is None:
        device = next(network.parameters()).device
    if dtype is None:
        dtype = resolve_precision(device, cfg.precision)
    x = torch.from_numpy(_normalise(case.image.astype(np.float32), cfg))[None, None]
    cval = _normalization(cfg).fill_value
    was_training = network.training
    network.eval()

    def predictor(w: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return network(w).float()

    with torch.no_grad():
        out = sliding_window_inference(
            x,
            predictor,
            cfg.patch_size_kji,
            overlap=cfg.val_overlap if overlap is None else overlap,
            batch_size=2,
            cval=cval,
            device=device,
            stitch_device="cpu",
        )
    network.train(was_training)
    return out[0].argmax(0).numpy().astype(np.uint8)


def validate(
    network: torch.nn.Module,
    cases: Sequence[PreparedCase],
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Dice per structure (model grid, argmax) over ``cases``; only where a structure is contoured.

    Returns ``{"dice": {name: mean}, "mean_dice": mean over structures, "per_case": {...}}``.
    """
    per: dict[str, list[float]] = {s: [] for s in cfg.structures}
    per_case = {}
    for case in cases:
        pred = predict_case(network, case, cfg, device=device, dtype=dtype)
        row = {}
        for c, name in enumerate(cfg.structures, start=1):
            if not case.available[c]:
                continue
            a, b = pred == c, case.labels == c
            denom = int(a.sum()) + int(b.sum())
            d = 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom
            per[name].append(d)
            row[name] = round(d, 4)
        per_case[case.case_id] = row
    dice = {k: float(np.mean(v)) for k, v in per.items() if v}
    return {"dice": dice, "mean_dice": float(np.mean(list(dice.values()))) if dice else float("nan"), "per_case": per_case}


def _guard_result(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "mean_dice": round(result["mean_dice"], 4),
        "dice": {k: round(v, 4) for k, v in result["dice"].items()},
        "per_case": result["per_case"],
    }


def forgetting_guard(
    before: dict[str, Any] | None, after: dict[str, Any], *, data: Sequence[str], n_cases: int
) -> dict[str, Any]:
    """Compare the guard set's Dice before (initial package) and after fine-tuning.

    Parameters
    ----------
    before, after : dict
        ``{"mean_dice", "dice": {structure: mean}, ...}`` of :func:`validate` (``before`` None:
        unknown, e.g. a resumed run whose checkpoint predates the guard).
    data : sequence of str
        The guard data (recorded).
    n_cases : int

    Returns
    -------
    dict
        ``data``, ``cases``, ``before``, ``after`` (mean and per-structure Dice), ``change`` (after
        minus before, per structure and ``mean``), ``worst_structure`` and ``verdict``, a sentence.

    Examples
    --------
    >>> g = forgetting_guard({"mean_dice": 0.8, "dice": {"a": 0.8}}, {"mean_dice": 0.7, "dice": {"a": 0.7}}, data=["v"], n_cases=2)
    >>> g["change"], g["worst_structure"]
    ({'a': -0.1, 'mean': -0.1}, 'a')
    """
    out: dict[str, Any] = {
        "data": list(data),
        "cases": int(n_cases),
        "before": {k: before[k] for k in ("mean_dice", "dice")} if before else None,
        "after": {k: after[k] for k in ("mean_dice", "dice")},
        "change": None,
        "worst_structure": None,
    }
    if before is None:
        out["verdict"] = f"after fine-tuning mean Dice {after['mean_dice']:.4f} (initial model not measured)"
        return out
    change = {k: round(v - before["dice"][k], 4) for k, v in after["dice"].items() if k in before["dice"]}
    change["mean"] = round(after["mean_dice"] - before["mean_dice"], 4)
    out["change"] = change
    per = {k: v for k, v in change.items() if k != "mean"}
    worst = min(per, key=per.get) if per else None
    out["worst_structure"] = worst
    text = f"mean Dice {before['mean_dice']:.4f} before -> {after['mean_dice']:.4f} after ({change['mean']:+.4f})"
    if worst is not None:
        text += f"; largest change {worst} {per[worst]:+.4f}"
    out["verdict"] = text
    return out


def _pick_validation_cases(cases: Sequence[PreparedCase], n: int) -> list[PreparedCase]:
    """The ``n`` cases with the most contoured structures (ties: data order)."""
    order = sorted(range(len(cases)), key=lambda i: (-int(cases[i].available.sum()), i))
    return [cases[i] for i in sorted(order[:n])]


# --------------------------------------------------------------------------------------------
# Checkpoints and bookkeeping
# --------------------------------------------------------------------------------------------
def git_version(path: str | os.PathLike | None = None) -> str | None:
    """``<commit>`` (plus ``-dirty`` when files changed) of the repository holding ``path``."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    return cfg.learning_rate * (1.0 - step / max(1, cfg.iterations)) ** 0.9


def _plain(value: Any) -> Any:
    """Plain JSON-able Python values (numpy scalars become floats), so that the checkpoint loads with weights_only."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    state = {k: (_plain(v) if k in ("numpy_rng", "history", "validations", "best", "config") else v) for k, v in state.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``: tensors and plain values only, no code runs.

    Raises
    ------
    SegDeepError
        The file holds pickled Python objects (a planted or foreign file) or is not a checkpoint.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SegDeepError(
            f"refused to load the checkpoint {path}: it holds pickled Python objects that would run code to be rebuilt "
            "(not a SegDeep checkpoint); delete it or start without --resume"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise SegDeepError(f"cannot read the checkpoint {path}: {exc}") from exc
    needed = ("network", "optimizer", "step", "numpy_rng", "torch_rng", "history", "validations", "best")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise SegDeepError(f"{path} is not a SegDeep training checkpoint (it lacks {', '.join(needed)})")
    return state


def _build(cfg: TrainConfig) -> torch.nn.Module:

    params = dict(cfg.architecture_params)
    params.setdefault("in_channels", 1)
    params.setdefault("out_channels", len(cfg.labels) + 1)
    return build_network(cfg.architecture, params)


def _setup_logging(work_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(work_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    write_package: bool = True,
    progress_bar: bool = True,
    cancel: CancelToken | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train a network as ``cfg`` says; return a summary (history, best validation, package path).

    Parameters
    ----------
    cfg : TrainConfig
    resume : bool
        Continue from ``<work_dir>/checkpoint.pt`` if present (same data and settings are
        expected; ``iterations`` may be raised to train longer).
    write_package : bool
        Write the model package to ``cfg.output`` at the end.
    progress_bar : bool
        Show a tqdm bar (loss, learning rate, last validation mean Dice) on stderr.
    cancel : CancelToken, optional
        Checked every step; a cancelled run saves its checkpoint and raises ``CancelledError``.
    on_step : callable, optional
        ``on_step(step, loss)`` after every optimiser step (tests, GUIs).

    Returns
    -------
    dict with ``history`` (step, loss, lr, seconds), ``validation`` (list of results),
    ``best`` (step and mean Dice), ``package`` (path or None), ``seconds``.
    """
    from tqdm import tqdm

    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(work)
    torch.set_num_threads(max(1, int(cfg.threads)))
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(device, cfg.precision)
    try:
        structures = cfg.structures
        log.info("config %s", json.dumps(cfg.to_dict()))
        log.info("device %s, precision %s", _describe_device(device), precision_name(amp_dtype))
        t0 = time.perf_counter()
        train_files = find_cases(cfg.train_data, structures)
        cases = load_cases(train_files, structures, cfg.spacing_ijk_mm, cfg.orientation, cache_dir=cfg.cache_dir)
        val_cases: list[PreparedCase] = []
        val_files = []
        if cfg.validation_data:
            val_files = find_cases(cfg.validation_data, structures)
            all_val = load_cases(val_files, structures, cfg.spacing_ijk_mm, cfg.orientation, cache_dir=cfg.cache_dir)
            val_cases = _pick_validation_cases(all_val, cfg.val_cases)
        log.info("loaded %d training and %d validation cases in %.1f s", len(cases), len(val_files), time.perf_counter() - t0)
        guard_data = list(cfg.guard_validation_data or cfg.validation_data) if cfg.init_from else []
        guard_cases: list[PreparedCase] = []
        if guard_data:
            guard_files = find_cases(guard_data, structures)
            guard_cases = load_cases(guard_files, structures, cfg.spacing_ijk_mm, cfg.orientation, cache_dir=cfg.cache_dir)
        unlabeled_files, unlabeled = _load_unlabeled(cfg, val_files)
        counts = {s: int(sum(c.available[i + 1] for c in cases)) for i, s in enumerate(structures)}
        log.info("training cases contouring each structure: %s", counts)
        if cfg.ce_weighting not in ("none", "median-frequency"):
            raise SegDeepError(f"ce_weighting must be 'none' or 'median-frequency', got {cfg.ce_weighting!r}")
        class_weight = None
        if cfg.ce_weighting == "median-frequency":
            voxels = np.zeros(len(structures) + 1)
            for c in cases:
                voxels += np.bincount(c.labels.ravel(), minlength=len(structures) + 1)[: len(structures) + 1]
            class_weight = torch.tensor(median_frequency_weights(voxels.tolist()), dtype=torch.float32, device=device)
            log.info("cross-entropy class weights (median frequency): %s", [round(float(w), 3) for w in class_weight])
        reference = reference_statistics(cases, structures, cfg.spacing_ijk_mm[::-1], source=", ".join(cfg.train_data))

        loc_rng = np.random.default_rng([cfg.seed, 1])
        locations = [class_locations(c.labels, len(structures) + 1, loc_rng) for c in cases]

        torch.manual_seed(cfg.seed)
        network = _build(cfg)
        inherited = initialise_from_package(network, cfg.init_from, cfg.structures) if cfg.init_from else None
        if inherited is not None:
            log.info("initialised from %s: %s", cfg.init_from, json.dumps(inherited))
        network.to(device)
        teacher: torch.nn.Module | None = None
        if unlabeled:
            teacher = copy.deepcopy(network)
            teacher.requires_grad_(False)
            teacher.eval()
        rampup = cfg.consistency_rampup if cfg.consistency_rampup is not None else cfg.iterations // 4
        u_batch = cfg.unlabeled_batch_size or cfg.batch_size
        pairs = lateral_pairs(cfg.structures)
        lateral = _lateral_axis(cfg.orientation)
        optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        step = 0
        history: list[dict[str, float]] = []
        validations: list[dict[str, Any]] = []
        best = {"step": None, "mean_dice": -1.0}
        guard_before: dict[str, Any] | None = None
        elapsed_before = 0.0
        ckpt_path = work / "checkpoint.pt"
        best_path = work / "best_weights.pt"
        # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not.
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path)
            network.load_state_dict(state["network"])
            if teacher is not None:
                if state.get("teacher") is None:
                    raise SegDeepError(
                        f"{ckpt_path} has no mean-teacher weights (it comes from a run without --unlabeled); resume "
                        "without --unlabeled or start a new --work-dir"
                    )
                teacher.load_state_dict(state["teacher"])
            optimiser.load_state_dict(state["optimizer"])  # moves the optimiser state to the weights' device
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            history, validations, best = state["history"], state["validations"], state["best"]
            elapsed_before = float(state.get("seconds", 0.0))
            guard_before = state.get("guard_before")
            log.info("resumed from %s at step %d", ckpt_path, step)
        elif guard_cases:  # the initial package's Dice on the guard set, before any step
            guard_before = _guard_result(validate(network, guard_cases, cfg, device=device, dtype=amp_dtype))
            log.info("forgetting guard: initial model mean Dice %.4f on %d cases", guard_before["mean_dice"], len(guard_cases))

        def checkpoint() -> None:
            _save_checkpoint(
                ckpt_path,
                {
                    "network": network.state_dict(),
                    "optimizer": optimiser.state_dict(),
                    "step": step,
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "validations": validations,
                    "best": best,
                    "seconds": elapsed_before + time.perf_counter() - t_start,
                    "config": cfg.to_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "guard_before": guard_before,
                    "teacher": teacher.state_dict() if teacher is not None else None,
                },
            )

        def run_validation() -> None:
            if not val_cases:
                return
            tv = time.perf_counter()
            result = validate(shipped, val_cases, cfg, device=device, dtype=amp_dtype)
            if teacher is not None:  # the teacher is validated and shipped; the student is recorded too
                student = validate(network, val_cases, cfg, device=device, dtype=amp_dtype)
                result["model"] = "teacher"
                result["student"] = {"dice": student["dice"], "mean_dice": student["mean_dice"]}
            result["step"] = step
            result["seconds"] = round(time.perf_counter() - tv, 1)
            validations.append(result)
            log.info(
                "validation step %d mean Dice %.4f %s (%.1f s)",
                step,
                result["mean_dice"],
                json.dumps({k: round(v, 3) for k, v in result["dice"].items()}),
                result["seconds"],
            )
            if result["mean_dice"] > best["mean_dice"]:
                best.update(step=step, mean_dice=result["mean_dice"], dice=result["dice"])
                with atomic_path(best_path) as tmp:
                    torch.save(shipped.state_dict(), tmp)

        shipped = teacher if teacher is not None else network  # validated, selected and packaged
        network.train()
        t_start = time.perf_counter()
        bar = tqdm(
            total=cfg.iterations, initial=step, desc="train", file=sys.stderr, disable=not progress_bar, dynamic_ncols=True
        )
        last_val = f"{best['mean_dice']:.3f}" if best["step"] is not None else "-"
        stopped_early = False
        try:
            while step < cfg.iterations:
                if cancel is not None and cancel.cancelled:
                    checkpoint()
                    cancel.raise_if_cancelled()
                ts = time.perf_counter()
                x, y, avail = (t.to(device, non_blocking=True) for t in make_batch(cases, locations, cfg, rng))
                lr = _lr(step, cfg)
                for g in optimiser.param_groups:
                    g["lr"] = lr
                optimiser.zero_grad(set_to_none=True)
                extra: dict[str, float] = {}
                if teacher is None:
                    with autocast(device, amp_dtype):
                        logits = network(x)
                    loss = marginal_dice_ce_loss(logits.float(), y, avail, class_weight)
                else:
                    xs, xt, flipped = make_unlabeled_batch(
                        unlabeled,
                        u_batch,
                        cfg.patch_size_kji,
                        tuple(cfg.spacing_ijk_mm[::-1]),
                        lambda a: _normalise(a, cfg),
                        rng,
                        p_spatial=cfg.p_spatial,
                        p_flip=cfg.p_flip,
                        lateral_axis=lateral,
                        can_flip=bool(pairs is not None),
                    )
                    with torch.no_grad(), autocast(device, amp_dtype):
                        target_p = torch.softmax(teacher(xt.to(device)).float(), dim=1)
                    target_p = align_teacher(target_p, flipped, pairs or [], lateral)
                    with autocast(device, amp_dtype):  # one pass: instance norm keeps the patches independent
                        logits = network(torch.cat([x, xs.to(device)]))
                    supervised = marginal_dice_ce_loss(logits[: x.shape[0]].float(), y, avail, class_weight)
                    consistency = consistency_loss(logits[x.shape[0] :], target_p)
                    weight = cfg.consistency_weight * sigmoid_rampup(step, rampup)
                    loss = supervised + weight * consistency
                    extra = {
                        "supervised": round(float(supervised.detach()), 5),
                        "consistency": round(float(consistency.detach()), 6),
                        "consistency_weight": round(weight, 5),
                    }
                if not torch.isfinite(loss):
                    raise SegDeepError(f"training diverged at step {step} (loss {float(loss)})")
                scaler.scale(loss).backward()
                scaler.unscale_(optimiser)
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                scaler.step(optimiser)
                scaler.update()
                step += 1
                if teacher is not None:
                    ema_update(teacher, network, cfg.ema_decay, step)
                loss_value = float(loss.detach())
                history.append(
                    {"step": step, "loss": round(loss_value, 5), "lr": lr, **extra, "s": round(time.perf_counter() - ts, 3)}
                )
                if on_step is not None:
                    on_step(step, loss_value)
                if step % cfg.log_every == 0:
                    recent = [h["loss"] for h in history[-cfg.log_every :]]
                    speed = np.mean([h["s"] for h in history[-cfg.log_every :]])
                    log.info("step %d loss %.4f lr %.2e %.2f s/it", step, float(np.mean(recent)), lr, speed)
                    if teacher is not None:
                        cons = float(np.mean([h["consistency"] for h in history[-cfg.log_every :]]))
                        log.info("step %d consistency %.6f (weight %.4f)", step, cons, history[-1]["consistency_weight"])
                if val_cases and (step % cfg.val_every == 0 or step == cfg.iterations):
                    run_validation()
                    last_val = f"{validations[-1]['mean_dice']:.3f}"
                if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                    checkpoint()
                bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.1e} val {last_val}", refresh=False)
                bar.update(1)
                if cfg.stop_at_step is not None and step >= cfg.stop_at_step and step < cfg.iterations:
                    log.info("stopped at step %d as asked (--stop-at-step)", step)
                    checkpoint()
                    stopped_early = True
                    break
                minutes = (elapsed_before + time.perf_counter() - t_start) / 60
                if cfg.max_minutes is not None and minutes >= cfg.max_minutes and step < cfg.iterations:
                    log.info("time limit of %.1f min reached at step %d", cfg.max_minutes, step)
                    if val_cases and (not validations or validations[-1]["step"] != step):
                        run_validation()
                    checkpoint()
                    stopped_early = True
                    break
        finally:
            bar.close()
        seconds = elapsed_before + time.perf_counter() - t_start
        log.info(
            "training finished at step %d after %.1f min (best step %s, mean Dice %.4f)",
            step,
            seconds / 60,
            best["step"],
            best["mean_dice"],
        )
        if best["step"] is not None and best_path.exists():
            shipped.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
        guard = None
        if guard_cases:
            after = _guard_result(validate(shipped, guard_cases, cfg, device=device, dtype=amp_dtype))
            guard = forgetting_guard(guard_before, after, data=guard_data, n_cases=len(guard_cases))
            log.info("forgetting guard: %s", guard["verdict"])
        summary = {
            "steps": step,
            "stopped_early": stopped_early,
            "seconds": round(seconds, 1),
            "history": history,
            "validation": validations,
            "best": best,
            "package": None,
            "device": _describe_device(device),
            "precision": precision_name(amp_dtype),
            "init_from": inherited,
            "forgetting_guard": guard,
            "semi_supervised": _semi_supervised_info(cfg, unlabeled_files, rampup, u_batch) if teacher is not None else None,
        }
        write_text(work / "history.json", json.dumps({k: v for k, v in summary.items()}, indent=1, default=str))
        if write_package:
            summary["package"] = str(
                write_model_package(
                    shipped, cfg, train_files=train_files, val_files=val_files, summary=summary, reference=reference
                )
            )
            log.info("model package written to %s", summary["package"])
        return summary
    finally:
        log.removeHandler(handler)
        handler.close()


def _load_unlabeled(cfg: TrainConfig, val_files: Sequence[Any]) -> tuple[list[Any], list[PreparedCase]]:
    """The ``--unlabeled`` cases (CT only; label files ignored) on the model grid."""
    if not cfg.unlabeled_data:
        return [], []
    if cfg.consistency_weight < 0:
        raise SegDeepError(f"the consistency weight must be >= 0, got {cfg.consistency_weight}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise SegDeepError(f"the EMA decay must be in [0, 1), got {cfg.ema_decay}")
    from .data import CaseFiles, TrainingDataError

    files = []
    for source in cfg.unlabeled_data:
        try:
            found = find_cases(source, [])
        except TrainingDataError as exc:
            raise TrainingDataError(f"--unlabeled {source}: {exc}") from exc
        files.extend(CaseFiles(c.case_id, c.ct, {}) for c in found)
    val_cts = {Path(v.ct).resolve() for v in val_files}
    leaked = [c.case_id for c in files if Path(c.ct).resolve() in val_cts]
    if leaked:
        raise TrainingDataError(
            f"--unlabeled holds validation CTs ({', '.join(leaked[:5])}{'...' if len(leaked) > 5 else ''}): validation "
            "cases must stay unseen"
        )
    t0 = time.perf_counter()
    cases = load_cases(files, [], cfg.spacing_ijk_mm, cfg.orientation, cache_dir=cfg.cache_dir)
    log.info("loaded %d unlabelled cases in %.1f s (mean teacher)", len(cases), time.perf_counter() - t0)
    return files, cases


def _semi_supervised_info(cfg: TrainConfig, files: Sequence[Any], rampup: int, u_batch: int) -> dict[str, Any]:
    return {
        "method": "mean teacher (weight-averaged consistency targets, Perone & Cohen-Adad 2018)",
        "unlabeled_data": list(cfg.unlabeled_data),
        "unlabeled_cases": [c.case_id for c in files],
        "consistency": "squared distance of softmax outputs (sum over classes, mean over voxels), unlabelled patches",
        "consistency_weight": cfg.consistency_weight,
        "consistency_rampup_steps": rampup,
        "ema_decay": cfg.ema_decay,
        "unlabeled_batch_size": u_batch,
        "shipped_weights": "teacher",
    }


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def package_settings(package: str | os.PathLike) -> dict[str, Any]:
    """The :class:`TrainConfig` fields a model package fixes for fine-tuning: architecture
    (without the output width, which follows the new label set), model grid, intensity
    normalisation and patch size, read from its card.

    Examples
    --------
    >>> from pathlib import Path
    >>> settings = package_settings(Path(__import__("SegDeepLogic").__file__).parents[1] / "Testing" / "Data" / "test_model")
    >>> settings["patch_size_kji"], settings["orientation"]
    ((32, 32, 32), 'LPI')
    """

    card = load_model_card(package)
    params = {k: v for k, v in card.architecture_params.items() if k not in ("in_channels", "out_channels")}
    intensity = card.intensity
    return {
        "architecture": card.architecture,
        "architecture_params": params,
        "spacing_ijk_mm": tuple(float(v) for v in card.spacing_ijk_mm),
        "orientation": card.orientation,
        "patch_size_kji": tuple(int(v) for v in card.patch_size_kji),
        "clip_hu": tuple(float(v) for v in intensity["clip_hu"]),
        "subtract": float(intensity["subtract"]),
        "divide": float(intensity["divide"]),
    }


def initialise_from_package(network: torch.nn.Module, package: str | os.PathLike, structures: Sequence[str]) -> dict[str, Any]:
    """Copy a model package's weights into ``network`` to fine-tune it (transfer learning).

    Every weight is copied except the output layer (``head``), which is copied channel by
    channel: background, and each of ``structures`` that the package also segments (matched by
    name); the other output channels keep ``network``'s fresh initialisation. The rest of the
    architecture must be the package's: same parameter names and shapes.

    Parameters
    ----------
    network : torch.nn.Module
        A freshly built network for the new label set (``len(structures) + 1`` outputs).
    package : path-like
        Model package folder, its ``model.json`` or a ``.zip`` archive (weights verified).
    structures : sequence of str
        The new label names, in output-channel order (channel ``k`` is ``structures[k-1]``).

    Returns
    -------
    dict
        What was inherited, for the card: package name, version and weights SHA-256,
        ``inherited`` and ``new`` structure names.

    Raises
    ------
    SegDeepError
        When the package's architecture differs from ``network``'s (the message names the
        first differing parameter and both shapes).
    """

    source = load_model_package(package)
    old = source.network.state_dict()
    new = network.state_dict()
    old_names = ["background", *source.card.label_names]
    channel_of = {name: c for c, name in enumerate(old_names)}
    targets = ["background", *structures]
    for key, value in new.items():
        if key.startswith("head."):
            continue
        if key not in old or tuple(old[key].shape) != tuple(value.shape):
            got = tuple(old[key].shape) if key in old else "missing"
            raise SegDeepError(
                f"--init-from {package}: its network differs from the one to train at {key!r} (package {got}, training "
                f"{tuple(value.shape)}); train with the package's settings (architecture {source.card.architecture}, "
                f"{source.card.architecture_params})"
            )
    with torch.no_grad():
        for key, value in new.items():
            if key.startswith("head."):
                for c, name in enumerate(targets):
                    if name in channel_of:
                        value[c].copy_(old[key][channel_of[name]])
            else:
                value.copy_(old[key])
    network.load_state_dict(new)
    inherited = [s for s in structures if s in channel_of]
    return {
        "package": source.card.name,
        "version": source.card.version,
        "weights_sha256": source.weights_sha256,
        "inherited": inherited,
        "new": [s for s in structures if s not in channel_of],
    }


def write_model_package(network: torch.nn.Module, cfg: TrainConfig, *, train_files, val_files, summary, reference=None) -> Path:  # noqa: ANN001
    """Write ``network`` with a card recording data, split, settings, code version and metrics.

    ``reference``: :func:`SegDeepLogic.plausibility.reference_statistics` of the training cases,
    stored as the card's ``reference_statistics`` for the out-of-distribution check.
    """

    best = summary["best"]
    card = ModelCard(
        name=cfg.model_name,
        version=cfg.model_version,
        description=cfg.description or f"3D U-Net segmenting {', '.join(cfg.structures)} in CT.",
        architecture=cfg.architecture,
        architecture_params=_build_params(cfg),
        in_channels=1,
        labels=[
            {
                "name": d["name"],
                "value": v,
                "color": list(d.get("color") or default_color(v)),
                "terminology": d.get("terminology"),
            }
            for v, d in enumerate(cfg.labels, 1)
        ],
        spacing_ijk_mm=list(cfg.spacing_ijk_mm),
        orientation=cfg.orientation,
        intensity={"clip_hu": list(cfg.clip_hu), "subtract": cfg.subtract, "divide": cfg.divide},
        patch_size_kji=list(cfg.patch_size_kji),
        training={
            "data": cfg.data_info or {"train": cfg.train_data, "validation": cfg.validation_data},
            "split": {
                "train": [c.case_id for c in train_files],
                "validation": [c.case_id for c in val_files],
                "train_cases_per_structure": {s: sum(s in c.masks for c in train_files) for s in cfg.structures},
            },
            "settings": {
                k: v for k, v in cfg.to_dict().items() if k not in ("labels", "limitations", "data_info", "description")
            },
            "coarse_resolution_mm": list(cfg.spacing_ijk_mm),
            "steps": summary["steps"],
            "selected_step": best.get("step"),
            "minutes": round(summary["seconds"] / 60, 1),
            "code_version": git_version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loss": "marginal (partial-label) Dice + cross-entropy",
            "device": summary.get("device"),
            "precision": summary.get("precision"),
            **({"init_from": summary["init_from"]} if summary.get("init_from") else {}),
            **({"forgetting_guard": summary["forgetting_guard"]} if summary.get("forgetting_guard") else {}),
            **({"semi_supervised": summary["semi_supervised"]} if summary.get("semi_supervised") else {}),
        },
        validation_metrics={
            "model_grid_dice_mean": {k: round(v, 4) for k, v in (best.get("dice") or {}).items()},
            "model_grid_mean_dice": round(best["mean_dice"], 4) if best.get("step") is not None else None,
            "note": "Dice on the model grid for the validation cases used for selection during training; see the "
            "evaluation report for the native-resolution numbers.",
        },
        license="Apache-2.0 (weights); training data under the OpenKBP terms",
        limitations=" ".join(cfg.limitations),
        reference_statistics={"training": reference} if reference else {},
    )
    return save_model_package(network, card, cfg.output, overwrite=True)


def _build_params(cfg: TrainConfig) -> dict[str, Any]:
    params = dict(cfg.architecture_params)
    params.setdefault("in_channels", 1)
    params.setdefault("out_channels", len(cfg.labels) + 1)
    return params
