"""Partial-label (marginal) Dice + cross-entropy loss.

In a case where a structure was not contoured, its voxels carry label 0 although they are not
background: the truth there is "background *or* an unknown structure". The marginal loss
(Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ
segmentation", MedIA 2021) respects that:

* cross-entropy: the probabilities of the unknown classes are merged into background, so a
  voxel labelled 0 is scored by ``p(background) + sum p(unknown)``; predicting an unknown
  structure there costs nothing;
* Dice: computed only for the classes contoured in each case (background excluded), summed
  over the batch ("batch Dice": a class absent from one patch does not give a noisy 0); a
  class absent from all patches of the batch is scored by the cross-entropy alone.

A structure that *is* contoured in a case is penalised normally everywhere in that case.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

__all__ = ["marginal_cross_entropy", "marginal_dice_ce_loss", "marginal_dice_loss", "median_frequency_weights"]


def marginal_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor, class_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy with unknown classes merged into background.

    Parameters
    ----------
    logits : Tensor (B, C, D, H, W)
    target : Tensor of int64 (B, D, H, W)
        0 = background or unknown, c = class c (always available in its case).
    available : Tensor of bool (B, C)
        Classes contoured in each case (column 0, background, True).
    class_weight : Tensor (C,), optional
        Weight of the voxels labelled ``c`` (label 0 uses ``class_weight[0]``); the result is
        then the weighted mean, as :func:`torch.nn.functional.cross_entropy` computes it.

    Returns
    -------
    Scalar tensor: mean over voxels of ``-log p(target)``, where for label 0 the probability
    is the sum of background and the case's unknown classes.

    Examples
    --------
    >>> logits = torch.tensor([0.0, 5.0]).reshape(1, 2, 1, 1, 1)   # predicts class 1
    >>> target = torch.zeros(1, 1, 1, 1, dtype=torch.long)         # labelled 0
    >>> float(marginal_cross_entropy(logits, target, torch.tensor([[True, False]]))) < 1e-6
    True
    >>> float(marginal_cross_entropy(logits, target, torch.tensor([[True, True]]))) > 4.9
    True
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    merge = (~available.bool()).clone()
    merge[:, 0] = True
    mask = merge[:, :, None, None, None].expand_as(logp)
    bg = torch.logsumexp(logp.masked_fill(~mask, float("-inf")), dim=1)
    picked = logp.gather(1, target[:, None]).squeeze(1)
    nll = -torch.where(target == 0, bg, picked)
    if class_weight is None:
        return nll.mean()
    w = class_weight.to(nll.device, nll.dtype)[target]
    return (nll * w).sum() / w.sum()


def marginal_dice_loss(logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice averaged over the foreground classes contoured and present in the batch.

    Sums run over the voxels of the cases where the class is available only ("batch Dice").
    A class contoured but absent from the patches is left to the cross-entropy.
    """
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    n_fg = probs.shape[1]
    onehot = torch.stack([(target == c) for c in range(1, n_fg + 1)], dim=1).float()
    w = available[:, 1:].float()[:, :, None, None, None]
    dims = (0, 2, 3, 4)
    inter = (probs * onehot * w).sum(dims)
    denom = ((probs + onehot) * w).sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    # Classes absent from every patch where they are contoured are left to the cross-entropy:
    # their Dice would be a constant ~0 (smooth / sum of small probabilities) without a useful gradient.
    present = available[:, 1:].any(dim=0) & ((onehot * w).sum(dims) > 0)
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def marginal_dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor, class_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`marginal_dice_loss` + :func:`marginal_cross_entropy` (equal weights)."""
    return marginal_dice_loss(logits, target, available) + marginal_cross_entropy(logits, target, available, class_weight)


def median_frequency_weights(voxels_per_class: Sequence[float], max_weight: float = 10.0) -> list[float]:
    """Cross-entropy class weights by median-frequency balancing (Eigen & Fergus, ICCV 2015).

    ``voxels_per_class[c]`` counts the voxels labelled ``c`` over all training cases (a class
    not contoured in a case contributes nothing there, so a rarely contoured class counts as
    rare). Foreground class ``c`` gets ``median / frequency_c`` (median over the foreground
    classes), clipped to ``[1, max_weight]``; background keeps 1. A small or rarely contoured
    structure then pulls as hard as a typical one, instead of being left at p = 0, where the
    soft Dice has no gradient.

    Examples
    --------
    >>> median_frequency_weights([1000, 40, 20, 5])
    [1.0, 1.0, 1.0, 4.0]
    """
    fg = [float(v) for v in voxels_per_class[1:]]
    positive = [v for v in fg if v > 0]
    if not positive:
        return [1.0] * len(voxels_per_class)
    median = float(statistics.median(positive))
    return [1.0] + [min(max_weight, max(1.0, median / v)) if v > 0 else 1.0 for v in fg]
