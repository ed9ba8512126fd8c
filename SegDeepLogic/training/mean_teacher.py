"""Semi-supervised training with a mean teacher (weight-averaged consistency targets).

Perone & Cohen-Adad ("Deep semi-supervised segmentation with weight-averaged consistency
targets", DLMIA 2018), after Tarvainen & Valpola's mean teacher (NeurIPS 2017):

* the **teacher** is an exponential moving average (EMA) of the student's weights,
  ``teacher = a * teacher + (1 - a) * student`` after every optimiser step, with
  ``a = min(1 - 1 / (step + 1), ema_decay)`` (:func:`ema_update`);
* on **unlabelled** patches the student is trained to agree with the teacher: the squared
  distance between their softmax outputs, summed over classes and averaged over voxels
  (:func:`consistency_loss`), weighted by ``consistency_weight`` times a sigmoid ramp-up
  ``exp(-5 (1 - t / T)^2)`` over the first ``T`` steps (:func:`sigmoid_rampup`);
* the two predictions are made under **different perturbations** of the same patch
  (:func:`make_unlabeled_batch`): both see the same rotation/scaling (so voxels correspond),
  each gets its own intensity augmentation (scale/shift, noise, blur), and the student's patch
  is mirrored left-right with p = ``p_flip``; the teacher's probabilities are then mirrored
  and their ``*_left``/``*_right`` channels swapped (:func:`align_teacher`), so that both
  predictions describe the same anatomy voxel by voxel.

The consistency term is applied to the unlabelled cases only. Structures missing in partially
labelled cases are left to the partial-label loss (:mod:`.losses`), which already treats them as
unknown rather than background; they get no consistency target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._compat import zip_strict
from .augment import augment_intensity, extract_patch, random_rotation_scale, sample_center
from .data import PreparedCase

__all__ = [
    "CONSISTENCY_INTENSITY",
    "align_teacher",
    "consistency_loss",
    "ema_update",
    "make_unlabeled_batch",
    "sigmoid_rampup",
]

# Intensity perturbation of each of the two views: stronger than the supervised augmentation
# (augment_intensity's defaults 0.3/0.15/0.15) so that the views differ in most patches.
CONSISTENCY_INTENSITY = {"p_scale": 0.8, "p_noise": 0.5, "p_blur": 0.25}


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """``exp(-5 (1 - step / rampup_steps)^2)``, 1 from ``rampup_steps`` on (Laine & Aila 2017).

    Examples
    --------
    >>> round(sigmoid_rampup(0, 100), 4), round(sigmoid_rampup(50, 100), 4), sigmoid_rampup(100, 100)
    (0.0067, 0.2865, 1.0)
    >>> sigmoid_rampup(5, 0)
    1.0
    """
    if rampup_steps <= 0 or step >= rampup_steps:
        return 1.0
    t = 1.0 - max(0.0, float(step)) / rampup_steps
    return float(math.exp(-5.0 * t * t))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float, step: int) -> float:
    """Move the teacher's weights towards the student's; buffers are copied.

    ``step`` is the number of optimiser steps done (1 after the first): the effective decay
    ``min(1 - 1 / (step + 1), decay)`` makes the teacher a plain average early on, so it is not
    dominated by its random initialisation. Returns the decay used.
    """
    a = min(1.0 - 1.0 / (step + 1), float(decay))
    for t, s in zip_strict(teacher.parameters(), student.parameters()):
        t.mul_(a).add_(s.detach(), alpha=1.0 - a)
    for t, s in zip_strict(teacher.buffers(), student.buffers()):
        t.copy_(s)
    return a


def align_teacher(
    probabilities: torch.Tensor, flipped: torch.Tensor, pairs: Sequence[tuple[int, int]], axis: int
) -> torch.Tensor:
    """Mirror the teacher's probabilities where the student's patch was mirrored.

    Parameters
    ----------
    probabilities : Tensor (B, C, D, H, W)
        Teacher softmax on the unmirrored patches.
    flipped : Tensor of bool (B,)
        Which of the student's patches were mirrored.
    pairs : sequence of (int, int)
        Lateral label pairs (:func:`.augment.lateral_pairs`): their channels are swapped, as
        :func:`.augment.flip_left_right` swaps the labels.
    axis : int
        Spatial left-right axis (0 = k, 1 = j, 2 = i).

    Examples
    --------
    >>> p = torch.zeros(1, 3, 1, 1, 2)
    >>> p[0, 1, 0, 0, 0] = 1.0  # "left" structure in the first column
    >>> align_teacher(p, torch.tensor([True]), [(1, 2)], axis=2)[0, :, 0, 0].tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    if not bool(flipped.any()):
        return probabilities
    perm = list(range(probabilities.shape[1]))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    mirrored = torch.flip(probabilities[:, perm], dims=(2 + axis,))
    return torch.where(flipped.view(-1, 1, 1, 1, 1).to(probabilities.device), mirrored, probabilities)


def consistency_loss(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """Squared distance between the student's softmax and the teacher's, summed over classes,
    averaged over voxels (the teacher's side carries no gradient).

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 1, 1)
    >>> float(consistency_loss(logits, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1, 1)))
    0.5
    """
    p = torch.softmax(student_logits.float(), dim=1)
    return ((p - teacher_probabilities.detach().float()) ** 2).sum(dim=1).mean()


def make_unlabeled_batch(
    cases: Sequence[PreparedCase],
    batch_size: int,
    patch_size_kji: Sequence[int],
    spacing_kji: Sequence[float],
    normalise: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    *,
    p_spatial: float,
    p_flip: float,
    lateral_axis: int,
    can_flip: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two perturbed views of ``batch_size`` unlabelled patches.

    Returns
    -------
    student : Tensor (B, 1, D, H, W)
        Intensity-augmented view, mirrored along ``lateral_axis`` where ``flipped``.
    teacher : Tensor (B, 1, D, H, W)
        Independently intensity-augmented, unmirrored view of the same patch.
    flipped : Tensor of bool (B,)
    """
    students, teachers, flips = [], [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        center = sample_center(case.image.shape, [], case.available, rng, 0.0)
        transform = random_rotation_scale(rng) if rng.random() < p_spatial else None
        img, _ = extract_patch(case.image, case.labels, center, patch_size_kji, spacing_kji, transform)
        base = normalise(img)
        flip = bool(can_flip and rng.random() < p_flip)
        student = np.flip(base, axis=lateral_axis).copy() if flip else base
        students.append(augment_intensity(student, rng, **CONSISTENCY_INTENSITY))
        teachers.append(augment_intensity(base.copy(), rng, **CONSISTENCY_INTENSITY))
        flips.append(flip)
    return (
        torch.from_numpy(np.stack(students)[:, None]),
        torch.from_numpy(np.stack(teachers)[:, None]),
        torch.tensor(flips, dtype=torch.bool),
    )
