"""Does a whole-grid segmentation label anything outside the body box that ``restrict_to_body`` uses?

Usage (from the repository root)::

    python scripts/check_outside_body.py CT SEGMENTATION [CT SEGMENTATION ...] [--model PACKAGE] [--json OUT]

For each pair (a CT and a segmentation of it made with ``--no-body-crop`` or before the option
existed; ``-`` as SEGMENTATION: segment the CT here with ``restrict_to_body=False``, the default
settings otherwise; a folder: the reference masks in it, ``<structure>.nii.gz`` per label): the CT is put on the model grid as ``segdeep segment`` does, the body box is found
(:func:`SegDeepLogic.body.find_body_crop`), and the labelled voxels of the CT grid that lie outside
the CT region read from that box (:func:`SegDeepLogic.body.region_on_ct`) are counted per
structure. Zero everywhere means the restriction cannot have removed anything the whole-grid run
labelled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from SegDeepLogic import read_volume
from SegDeepLogic.body import find_body_crop, region_on_ct
from SegDeepLogic.grid import Grid, axis_maps, model_grid
from SegDeepLogic.model_input import antialias_sigma_mm, resample_to_model_grid
from SegDeepLogic.segment import _axial_axis, load_model, segment_volume
from SegDeepLogic.segmentation_io import read_labelmap_nifti, read_seg_nrrd


def outside_counts(ct_path: Path, seg_path: Path, package) -> dict:  # noqa: ANN001
    card = package.card
    ct = read_volume(ct_path)
    if str(seg_path) == "-":
        labels = segment_volume(ct, package, restrict_to_body=False).labels
    elif seg_path.is_dir():  # reference masks, one <structure>.nii.gz per label of the card
        array = np.zeros(ct.array.shape, np.uint8)
        for label in card.labels:
            mask_path = seg_path / f"{label['name']}.nii.gz"
            if mask_path.is_file():
                array[read_volume(mask_path).array > 0] = int(label["value"])
        labels = ct.with_array(array)
    else:
        seg = read_seg_nrrd(seg_path, reference=ct) if seg_path.name.endswith(".seg.nrrd") else read_labelmap_nifti(seg_path)
        labels = seg.labelmap
    assert labels.array.shape == ct.array.shape, f"{seg_path}: not on the CT's grid"
    grid = model_grid(ct, str(card.orientation), [float(s) for s in card.spacing_ijk_mm])
    if axis_maps(Grid.of(ct), grid) is None:  # checked first: the separable resampling refuses such a grid
        return {"case": str(ct_path), "skipped": "oblique grid (the check uses the separable resampling only)"}
    array = resample_to_model_grid(ct, grid, antialias_sigma_mm(ct, grid))  # as segment_volume prepares the CT
    crop = find_body_crop(array, grid.spacing[::-1], card.patch_size_kji, axial_axis=_axial_axis(str(card.orientation)))
    row = {"case": str(ct_path), "box_kji": crop.as_dict()["box_kji"], "fraction_of_grid": round(crop.fraction, 3)}
    if crop.box is None:
        row["outside_voxels"] = {}
        return row
    region = region_on_ct(crop.box, axis_maps(grid, Grid.of(ct)), ct.array.shape, grid.shape_kji)
    outside = np.ones(ct.array.shape, bool)
    if region is not None:
        outside[region] = False
    values, counts = np.unique(labels.array[outside], return_counts=True)
    row["outside_voxels"] = {int(v): int(n) for v, n in zip(values.tolist(), counts.tolist()) if v != 0}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="CT SEGMENTATION pairs")
    parser.add_argument("--model", default="Resources/Models/headneck-ct")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give CT SEGMENTATION pairs")
    package = load_model(args.model)
    rows = []
    for c, s in zip(args.pairs[::2], args.pairs[1::2]):
        rows.append(outside_counts(Path(c), Path(s), package))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
