"""Render the demo picture (docs/demo.png): CT slices with contours and the exported mesh.

Usage: python scripts/render_demo.py CT SEGMENTATION REFERENCE_MASK MESH.stl OUT.png
Headless (matplotlib Agg). Slices are shown in radiological convention (patient left on the
image right) with physical aspect ratios; the mesh is drawn in LPS millimetres.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from SegDeepLogic import read_volume  # noqa: E402
from SegDeepLogic.commands._common import load_segmentation  # noqa: E402


def read_binary_stl(path: str) -> np.ndarray:
    data = open(path, "rb").read()
    n = int(np.frombuffer(data, np.uint32, 1, 80)[0])
    rec = np.frombuffer(data, np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), n, 84)
    return rec["v"].astype(float)


def main(ct_path: str, seg_path: str, ref_path: str, stl_path: str, out_path: str) -> None:
    ct = read_volume(ct_path)
    seg = load_segmentation(seg_path).labelmap.array > 0
    ref = load_segmentation(ref_path).labelmap.array > 0
    sk, sj, si = ct.spacing_kji
    kc, jc, ic = (int(round(x)) for x in np.argwhere(ref).mean(axis=0))
    body = np.argwhere(ct.array > -500)  # crop the views to the body (plus a margin)
    (k0, j0, i0), (k1, j1, i1) = np.maximum(body.min(0) - 4, 0), body.max(0) + 5
    crop = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
    arr = ct.array
    fig = plt.figure(figsize=(13, 4.6), dpi=110)
    views = [
        (f"axial (k = {kc})", *(a[kc, crop[1], crop[2]] for a in (arr, seg, ref)), sj / si),
        (f"coronal (j = {jc})", *(a[crop[0], jc, crop[2]] for a in (arr, seg, ref)), sk / si),
        (f"sagittal (i = {ic})", *(a[crop[0], crop[1], ic] for a in (arr, seg, ref)), sk / sj),
    ]
    for n, (title, img, s, r, aspect) in enumerate(views):
        ax = fig.add_subplot(1, 4, n + 1)
        ax.imshow(np.clip(img, -400, 1200), cmap="gray", aspect=aspect, interpolation="nearest")
        ax.contour(s, levels=[0.5], colors=["#ffd23f"], linewidths=0.8)
        ax.contour(r, levels=[0.5], colors=["#ff3b3b"], linewidths=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    tri = read_binary_stl(stl_path)
    step = max(1, len(tri) // 60000)
    tri = tri[::step]
    ax = fig.add_subplot(1, 4, 4, projection="3d")
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    shade = 0.35 + 0.65 * np.clip(normals @ light, 0, 1)
    colors = np.outer(shade, [0.95, 0.87, 0.68])
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, edgecolors="none"))
    lo, hi = tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.view_init(elev=10, azim=-90)  # looking from anterior (-P) toward posterior, LPS
    ax.set_xlabel("L (mm)", fontsize=7)
    ax.set_ylabel("P (mm)", fontsize=7)
    ax.set_zlabel("S (mm)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(f"STL mesh, LPS mm ({len(read_binary_stl(stl_path))} triangles)", fontsize=9)
    fig.suptitle("SegDeep demo — yellow: bone threshold 226–3071 HU; red: clinical mandible contour", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(*sys.argv[1:6])
