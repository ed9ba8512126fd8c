"""Report pictures, drawn headless with matplotlib's Agg canvas (no display, no pyplot state).

* :func:`slices_png` -- axial, coronal and sagittal slices through a point of a structure with
  the network contour, the comparison contour (threshold or reference), the disagreement and,
  in a second row, the uncertainty map. Slices are shown in radiological convention (patient
  right on the image left, anterior up in axial, superior up otherwise) with the physical
  aspect ratio and orientation letters.
* :func:`mesh_png` -- the exported surface seen from the front and from the patient's left,
  coloured by a per-vertex value (signed distance to another surface), drawn with a
  painter's algorithm (back faces culled, far triangles first) on a 2D canvas.

Every input is expected on a grid reoriented to LPS (``reorient_volume(v, "LPS")``): array
axes ``[k, j, i]`` pointing to superior, posterior and left.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .._compat import zip_strict
from ..mesh import Mesh

__all__ = ["COLORS", "CT_WINDOW_HU", "mesh_png", "slices_png"]

CT_WINDOW_HU = (-400.0, 1400.0)
"""Grey-level window of the CT in the slice pictures (HU): soft tissue and bone both visible."""

COLORS = {
    "network": "#ffd23f",
    "threshold": "#00e5ff",
    "reference": "#39ff14",
    "roi": "#ffffff",
    "only_network": (1.0, 0.15, 0.15, 0.5),
    "only_other": (0.2, 0.45, 1.0, 0.5),
}

# (name, fixed axis in [k, j, i], letters left/right/bottom/top)
_VIEWS = (
    ("axial", 0, ("R", "L", "P", "A")),
    ("coronal", 1, ("R", "L", "I", "S")),
    ("sagittal", 2, ("A", "P", "I", "S")),
)


def _to_png(fig: Figure, dpi: int) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()


def _plane(array: np.ndarray, view: int, index: int) -> np.ndarray:
    """2D plane of an LPS ``[k, j, i]`` array with its first axis pointing up the picture."""
    if view == 0:
        return array[index, ::-1, :]  # rows: anterior up (j decreasing)
    if view == 1:
        return array[:, index, :]  # rows: superior up
    return array[:, :, index]  # rows: superior up, columns: anterior left


def _plane_spacing(spacing_ijk: Sequence[float], view: int) -> tuple[float, float]:
    """(column, row) spacing in mm of :func:`_plane`."""
    si, sj, sk = spacing_ijk
    return ((si, sj), (si, sk), (sj, sk))[view]


def _letters(ax, letters: Sequence[str]) -> None:  # noqa: ANN001
    style = {"color": "white", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    box = {"boxstyle": "round,pad=0.1", "fc": "black", "ec": "none", "alpha": 0.6}
    left, right, bottom, top = letters
    ax.text(0.015, 0.5, left, ha="left", va="center", bbox=box, **style)
    ax.text(0.985, 0.5, right, ha="right", va="center", bbox=box, **style)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", bbox=box, **style)
    ax.text(0.5, 0.985, top, ha="center", va="top", bbox=box, **style)


def _scale_bar(ax, width_mm: float, height_mm: float) -> None:  # noqa: ANN001
    length = 10.0 if width_mm < 120 else 50.0
    x0, y0 = 0.06 * width_mm, 0.06 * height_mm
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2.5, solid_capstyle="butt")
    ax.text(x0 + length / 2, y0 + 0.025 * height_mm, f"{length:g} mm", color="white", fontsize=7, ha="center", va="bottom")


def slices_png(
    ct: np.ndarray,
    spacing_ijk: Sequence[float],
    centre_kji: Sequence[int],
    network: np.ndarray,
    *,
    other: np.ndarray | None = None,
    other_kind: str = "threshold",
    roi: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    dpi: int = 80,
) -> bytes:
    """Axial, coronal and sagittal slices through ``centre_kji`` as a PNG.

    Parameters
    ----------
    ct : (nk, nj, ni) array
        CT in HU on an LPS-oriented grid (typically cropped around the structure).
    spacing_ijk : 3 floats
        Voxel size in mm (i, j, k).
    centre_kji : 3 ints
        Voxel where the three planes cross.
    network : bool array
        The network's structure (yellow contour).
    other : bool array, optional
        The mask it is compared with (cyan contour for a threshold, green for a reference);
        the disagreement is filled: red where only the network has the structure, blue where
        only ``other`` has it.
    other_kind : {"threshold", "reference"}
        What ``other`` is (colour and legend).
    roi : bool array, optional
        Region the threshold was restricted to (dotted white contour).
    reference : bool array, optional
        A reference segmentation drawn as an extra green contour (when ``other`` is the threshold).
    uncertainty : float array, optional
        Network uncertainty (normalised entropy 0..1): a second row of the same slices.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    bytes
        The PNG file.
    """
    rows = 2 if uncertainty is not None else 1
    shapes = [_plane(ct, axis, int(centre_kji[axis])).shape for _, axis, _ in _VIEWS]
    ratios = [
        n[1] * _plane_spacing(spacing_ijk, a)[0] / (n[0] * _plane_spacing(spacing_ijk, a)[1])
        for n, (_, a, _) in zip_strict(shapes, _VIEWS)
    ]
    bar = 0.05 * sum(ratios) if uncertainty is not None else 0.0
    width = 12.0
    panel_h = min(5.0, 0.9 * width / (sum(ratios) + bar))
    fig = Figure(figsize=(width, rows * (panel_h + 0.35) + 0.4), facecolor="white")
    grid = fig.add_gridspec(rows, 4, width_ratios=[*ratios, max(bar, 1e-3)], wspace=0.04, hspace=0.12)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(rows)]
    only_net = only_other = None
    if other is not None:
        only_net, only_other = network & ~other, other & ~network
    lo, hi = CT_WINDOW_HU
    for col, (name, axis, letters) in enumerate(_VIEWS):
        index = int(centre_kji[axis])
        sx, sy = _plane_spacing(spacing_ijk, axis)
        img = _plane(ct, axis, index)
        ny, nx = img.shape
        extent = (-sx / 2, (nx - 0.5) * sx, -sy / 2, (ny - 0.5) * sy)
        x, y = np.arange(nx) * sx, np.arange(ny) * sy
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, interpolation="nearest")
            if row == 0 and other is not None:
                overlay = np.zeros((ny, nx, 4), dtype=np.float32)
                overlay[_plane(only_net, axis, index)] = COLORS["only_network"]
                overlay[_plane(only_other, axis, index)] = COLORS["only_other"]
                ax.imshow(overlay, origin="lower", extent=extent, interpolation="nearest")
            if row == 1:
                u = np.clip(_plane(uncertainty, axis, index).astype(np.float32), 0.0, 1.0)
                rgba = ScalarMappable(Normalize(0, 1), "magma").to_rgba(u)
                rgba[..., 3] = np.clip(u * 1.6, 0.0, 0.85)
                ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
            contours = [(network, COLORS["network"], "solid", 1.3)]
            if row == 0:
                if other is not None:
                    contours.append((other, COLORS[other_kind], "solid", 1.1))
                if reference is not None:
                    contours.append((reference, COLORS["reference"], "dashed", 1.1))
                if roi is not None:
                    contours.append((roi, COLORS["roi"], "dotted", 0.8))
            for mask, color, style, width in contours:
                plane = _plane(mask, axis, index)
                if plane.any() and not plane.all():
                    ax.contour(x, y, plane.astype(np.float32), levels=[0.5], colors=[color], linestyles=style, linewidths=width)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_aspect("equal")
            ax.set_axis_off()
            _letters(ax, letters)
            _scale_bar(ax, nx * sx, ny * sy)
            label = "uncertainty" if row == 1 else "contours"
            ax.set_title(f"{name} ({label}), {('k', 'j', 'i')[axis]} = {index}", fontsize=9)
    handles = [Line2D([], [], color=COLORS["network"], label="network")]
    if other is not None:
        handles += [
            Line2D([], [], color=COLORS[other_kind], label=other_kind),
            Patch(color=COLORS["only_network"], label=f"only network (not {other_kind})"),
            Patch(color=COLORS["only_other"], label=f"only {other_kind} (not network)"),
        ]
    if reference is not None:
        handles.append(Line2D([], [], color=COLORS["reference"], linestyle="dashed", label="reference"))
    if roi is not None:
        handles.append(Line2D([], [], color="black", linestyle="dotted", label="threshold region (ROI)"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    if uncertainty is not None:
        cax = fig.add_subplot(grid[1, 3])
        fig.colorbar(ScalarMappable(Normalize(0, 1), "magma"), cax=cax, label="uncertainty (entropy 0..1)")
    top = 1.0 - 0.4 / fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.95 if uncertainty is not None else 0.99, bottom=0.01, top=top)
    return _to_png(fig, dpi)


# --- surface rendering -------------------------------------------------------------------------
# (name, screen x axis, screen y axis, depth axis with sign towards the viewer) in LPS
_MESH_VIEWS = (
    ("anterior view", (0, 1.0), (2, 1.0), (1, -1.0), ("R", "L")),
    ("left lateral view", (1, 1.0), (2, 1.0), (0, 1.0), ("A", "P")),
)


def mesh_png(
    mesh: Mesh,
    values: np.ndarray | None = None,
    *,
    label: str = "signed distance (mm)",
    limit: float | None = None,
    color: Sequence[float] | str = (0.9, 0.85, 0.7),
    max_triangles: int = 80_000,
    title: str = "",
    dpi: int = 80,
) -> bytes:
    """Two shaded views (anterior, left lateral) of ``mesh`` as a PNG.

    Parameters
    ----------
    mesh : Mesh
        Surface (LPS or RAS; drawn in LPS).
    values : (n_vertices,) array, optional
        Per-vertex values mapped on a diverging colour scale symmetric about 0 (blue negative,
        red positive); the plain ``color`` when None.
    label : str
        Colour-bar label.
    limit : float, optional
        Colour scale range ``[-limit, limit]`` (default: the 98th percentile of ``|values|``,
        at least 1 mm).
    max_triangles : int
        Above this, only the larger triangles of a random subset are drawn (speed).
    title : str
        Figure title.
    dpi : int
        Resolution.

    Returns
    -------
    bytes
        The PNG file.
    """
    if mesh.space != "LPS":
        mesh = mesh.to_space("LPS")
    v, f = mesh.vertices, mesh.faces
    if len(f) > max_triangles:  # subsample for speed; holes are small at this resolution
        keep = np.random.default_rng(0).choice(len(f), max_triangles, replace=False)
        f = f[np.sort(keep)]
    corners = v[f]  # (m, 3, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    norm = cmap = None
    if values is not None:
        face_values = np.asarray(values, dtype=np.float64)[f].mean(axis=1)
        if limit is None:
            limit = max(1.0, float(np.percentile(np.abs(face_values), 98))) if face_values.size else 1.0
        norm, cmap = Normalize(-limit, limit), "RdBu_r"
        base = ScalarMappable(norm, cmap).to_rgba(face_values)[:, :3]
    else:
        base = np.tile(np.asarray(to_rgba(color))[:3], (len(f), 1))
    extent = np.ptp(v, axis=0) + 1e-6 if len(v) else np.ones(3)
    ratios = [min(3.0, max(0.33, extent[xa] / extent[ya])) for _, (xa, _), (ya, _), _, _ in _MESH_VIEWS]
    panel_h = 4.2
    bar = 0.035 * sum(ratios) if values is not None else 1e-3
    fig = Figure(figsize=(min(12.0, panel_h * (sum(ratios) + bar) * 1.15 + 0.6), panel_h + 0.6), facecolor="white")
    grid = fig.add_gridspec(1, 3, width_ratios=[*ratios, bar], wspace=0.08)
    axes = [fig.add_subplot(grid[0, c]) for c in range(2)]
    for ax, (name, (xa, xs), (ya, ys), (za, zs), (left, right)) in zip_strict(axes, _MESH_VIEWS):
        facing = normals[:, za] * zs  # component towards the viewer
        front = facing > 0
        depth = (corners[front, :, za] * zs).mean(axis=1)
        order = np.argsort(depth)  # far first
        poly = np.stack([corners[front][:, :, xa] * xs, corners[front][:, :, ya] * ys], axis=-1)[order]
        shade = 0.3 + 0.7 * facing[front][order, None]
        colors = np.clip(base[front][order] * shade, 0, 1)
        ax.add_collection(PolyCollection(poly, facecolors=colors, edgecolors="face", linewidths=0.1, antialiased=False))
        if len(poly):
            lo, hi = poly.reshape(-1, 2).min(axis=0), poly.reshape(-1, 2).max(axis=0)
            pad = 0.05 * (hi - lo).max()
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
        _letters(ax, (left, right, "I", "S"))
    if norm is not None:
        fig.colorbar(ScalarMappable(norm, cmap), cax=fig.add_subplot(grid[0, 2]), label=label, extend="both")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.92 if values is not None else 0.98, bottom=0.03, top=0.92)
    return _to_png(fig, dpi)
