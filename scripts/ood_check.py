"""Out-of-distribution check of a model on CTs it was not trained for: pictures and a JSON summary.

Usage (from the repository root; the data are the shared CTs named in docs/training.md)::

    python scripts/ood_check.py --model Resources/Models/headneck-ct \
        --ct cranium=../shared/data/invesalius/cranium_ct.nii.gz \
        --ct abdomen=../shared/data/totalsegmentator/example_ct.nii.gz \
        --out docs

Writes ``<out>/img/ood_<name>.png`` (label overlay), ``<out>/img/ood_<name>_<focus>.png`` (one
structure alone) and ``<out>/ood_summary.json``: per CT the
volume, pieces, slice range (LPI, from the top) and mean entropy of every structure, and the
out-of-distribution verdict with its findings (``SegDeepLogic.plausibility``). On a "mismatch"
the default output is empty (the labels are withheld); ``default_output`` records that run, and
the pictures and structure table show the network's prediction (``allow_mismatch=True``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from SegDeepLogic.grid import reorient_volume
from SegDeepLogic.io import read_volume
from SegDeepLogic.segment import segment_volume
from SegDeepLogic.segmentation_io import SegmentInfo
from SegDeepLogic.training.figures import overlay_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/Models/headneck-ct")
    parser.add_argument("--ct", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--focus", default="mandible", help="also draw this structure alone, with its pieces listed")
    args = parser.parse_args()
    out_dir = Path(args.out)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    summary = {}
    for item in args.ct:
        name, path = item.split("=", 1)
        ct = read_volume(path)
        t = time.perf_counter()
        default = segment_volume(ct, args.model, uncertainty=True)  # what a user gets
        seconds = time.perf_counter() - t
        result = default
        if default.withheld:  # the network's prediction, for the pictures
            result = segment_volume(ct, args.model, uncertainty=True, allow_mismatch=True)
        lpi = reorient_volume(result.labels, "LPI").array
        structures = {}
        for row in result.uncertainty_summary:
            mask = lpi == row["value"]
            entry = {
                "volume_ml": round(row["volume_mm3"] / 1000, 2),
                "mean_entropy_inside": row["mean_entropy_inside"],
            }
            if mask.any():
                k = np.nonzero(mask.any(axis=(1, 2)))[0]
                entry["slices_from_top"] = [int(k.min()), int(k.max())]
                pieces, n = ndi.label(mask)
                entry["pieces"] = int(n)
                if row["name"] == args.focus:  # where each piece lies (LPI voxel ranges) and its size
                    entry["piece_list"] = [
                        {
                            "ml": round(float(np.count_nonzero(pieces == p)) * ct.voxel_volume_mm3 / 1000, 2),
                            "k_range": [int(b[0].start), int(b[0].stop - 1)],
                            "j_range": [int(b[1].start), int(b[1].stop - 1)],
                            "i_range": [int(b[2].start), int(b[2].stop - 1)],
                        }
                        for p, b in enumerate(ndi.find_objects(pieces), start=1)
                    ]
            structures[row["name"]] = entry
        summary[name] = {
            "ct": str(path),
            "geometry": ct.geometry_dict(),
            "slices": int(lpi.shape[0]),
            "seconds": round(seconds, 1),
            "structures": structures,
            "plausibility": result.plausibility,
            "default_output": {
                "verdict": default.plausibility["verdict"],
                "labelled_voxels": int(np.count_nonzero(default.labels.array)),
                "withheld": default.withheld,
            },
        }
        shown = "withheld by default; shown with allow_mismatch" if default.withheld else ""
        overlay_figure(
            ct,
            result.labels,
            result.segments,
            out_dir / "img" / f"ood_{name}.png",
            title=f"{Path(args.model).name} on {Path(path).name}: verdict {result.plausibility['verdict']}"
            + (f"\n(labels {shown})" if shown else ""),
        )
        focus = [seg for seg in result.segments if seg.name == args.focus]
        if focus and structures.get(args.focus, {}).get("pieces"):
            only = result.labels.with_array((result.labels.array == focus[0].value).astype(np.uint8))
            overlay_figure(
                ct,
                only,
                [SegmentInfo(f"{args.focus} (model)", 1, (1.0, 0.1, 0.1))],
                out_dir / "img" / f"ood_{name}_{args.focus}.png",
                axial_fractions=(0.1, 0.5, 0.9),
                title=f"{Path(path).name}: where the model puts '{args.focus}' (red)" + (f"\n({shown})" if shown else ""),
            )
        print(f"{name}: verdict {result.plausibility['verdict']}; withheld {default.withheld}", flush=True)
        for finding in result.plausibility["findings"]:
            print(f"  - {finding['message']}")
    (out_dir / "ood_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
