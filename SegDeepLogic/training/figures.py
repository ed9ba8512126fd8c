"""Pictures for training reports: CT slices with label overlays (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..grid import reorient_volume
from ..segmentation_io import SegmentInfo
from ..volume import Volume

__all__ = ["overlay_figure"]


def _rgba(labels: np.ndarray, colors: dict[int, Sequence[float]], alpha: float) -> np.ndarray:
    out = np.zeros((*labels.shape, 4), np.float32)
    for value, color in colors.items():
        m = labels == value
        out[m, :3] = color
        out[m, 3] = alpha
    return out


def overlay_figure(
    ct: Volume,
    labels: Volume | None,
    segments: Sequence[SegmentInfo],
    path: str | os.PathLike,
    *,
    axial_fractions: Sequence[float] = (0.3, 0.5, 0.7),
    window_hu: tuple[float, float] = (-250.0, 1250.0),
    title: str = "",
    reference: Volume | None = None,
    alpha: float = 0.45,
) -> Path:
    """Axial slices plus a coronal and a sagittal slice of ``ct`` with ``labels`` overlaid.

    Shown in the LPI orientation: axial slices with anterior at the top and the patient's left
    on the image right (radiological view), coronal/sagittal with superior at the top. Slices
    go through the centroid of the labels (or the volume centre when nothing was segmented).
    With ``reference`` a second row shows the reference label map on the same slices.

    Parameters
    ----------
    segments : sequence
        :class:`~SegDeepLogic.segmentation_io.SegmentInfo` (name, value, colour) of each label, for the legend.
    axial_fractions : sequence of float
        Axial slice positions as fractions of the labelled (or whole) superior-inferior extent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ct_o = reorient_volume(ct, "LPI")
    rows = [("prediction", reorient_volume(labels, "LPI").array if labels is not None else None)]
    if reference is not None:
        rows.append(("reference", reorient_volume(reference, "LPI").array))
    img = ct_o.array.astype(np.float32)
    si, sj, sk = ct_o.spacing
    colors = {int(s.value): tuple(s.color) for s in segments}
    lab0 = next((r for _, r in rows if r is not None and r.any()), None)
    if lab0 is not None:
        ks = np.nonzero(lab0.any(axis=(1, 2)))[0]
        k_lo, k_hi = int(ks.min()), int(ks.max())
        center = [int(round(c)) for c in np.argwhere(lab0 > 0).mean(axis=0)]
    else:
        k_lo, k_hi = 0, img.shape[0] - 1
        center = [n // 2 for n in img.shape]
    axial = [int(round(k_lo + f * (k_hi - k_lo))) for f in axial_fractions]
    views = [("axial", k) for k in axial] + [("coronal", center[1]), ("sagittal", center[2])]
    fig, axes = plt.subplots(len(rows), len(views), figsize=(3.1 * len(views), 3.3 * len(rows) + 0.6), squeeze=False)
    for r, (row_name, lab) in enumerate(rows):
        for c, (view, index) in enumerate(views):
            ax = axes[r, c]
            if view == "axial":
                sl, ov, extent = img[index], None if lab is None else lab[index], (0, img.shape[2] * si, img.shape[1] * sj, 0)
                name = f"axial k={index}"
            elif view == "coronal":
                sl, ov, extent = (
                    img[:, index],
                    None if lab is None else lab[:, index],
                    (0, img.shape[2] * si, img.shape[0] * sk, 0),
                )
                name = f"coronal j={index}"
            else:
                sl, ov, extent = (
                    img[:, :, index],
                    None if lab is None else lab[:, :, index],
                    (0, img.shape[1] * sj, img.shape[0] * sk, 0),
                )
                name = f"sagittal i={index}"
            ax.imshow(sl, cmap="gray", vmin=window_hu[0], vmax=window_hu[1], extent=extent, interpolation="nearest")
            if ov is not None and ov.any():
                ax.imshow(_rgba(ov, colors, alpha), extent=extent, interpolation="nearest")
            ax.set_title(f"{row_name}: {name}" if len(rows) > 1 else name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=s.color, label=s.name) for s in segments]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
