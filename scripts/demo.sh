#!/usr/bin/env bash
# Set up everything and run the demo on the real head-and-neck CT that ships in the repository
# (OpenKBP case pt_236). Results go to out/demo/ (or the folder given as first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh ""
out="${1:-out/demo}"
sample=Resources/SampleData/openkbp_pt_236
mkdir -p "$out"

echo "== 1. bone by global threshold (226-3071 HU), largest component, islands < 100 mm³ removed"
segdeep threshold "$sample/ct.nii.gz" -o "$out/bone_threshold.seg.nrrd" --preset bone --keep-largest \
  --min-island-mm3 100 --json "$out/threshold.json" --overwrite

if segdeep segment --help >/dev/null 2>&1 && ls Resources/Models/*/model.json >/dev/null 2>&1; then
  echo "== 2. U-Net segmentation with the bundled model (CPU or GPU), uncertainty map"
  segdeep segment "$sample/ct.nii.gz" -o "$out/unet.seg.nrrd" --uncertainty "$out/uncertainty.nii.gz" \
    --json "$out/segment.json" --overwrite
  echo "== 2b. network mandible vs the clinical contour"
  segdeep compare "$out/unet.seg.nrrd" "$sample/mandible.nii.gz" --label-a mandible -o "$out/unet_vs_contour.json" --no-progress
fi

echo "== 3. threshold vs the clinical mandible contour, inside the contour grown by 10 mm"
segdeep compare "$out/bone_threshold.seg.nrrd" "$sample/mandible.nii.gz" --roi "$sample/mandible.nii.gz" \
  --roi-margin-mm 10 -o "$out/threshold_vs_contour.json" --disagreement "$out/disagreement.seg.nrrd" --overwrite

echo "== 4. printable mesh (STL, LPS mm) with print-readiness report"
segdeep export "$out/bone_threshold.seg.nrrd" -o "$out/meshes" --format stl --report "$out/print_report.json" --overwrite

echo "== 5. picture"
python scripts/render_demo.py "$sample/ct.nii.gz" "$out/bone_threshold.seg.nrrd" "$sample/mandible.nii.gz" \
  "$out/meshes/bone.stl" "$out/demo.png"

python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
if os.path.exists(f"{out}/unet_vs_contour.json"):
    u = json.load(open(f"{out}/unet_vs_contour.json"))
    print(f"U-Net mandible vs clinical contour: Dice {u['dice']:.3f}, HD95 {u['hd95_mm']:.1f} mm, ASSD {u['assd_mm']:.2f} mm")
m = json.load(open(f"{out}/threshold_vs_contour.json"))
r = json.load(open(f"{out}/print_report.json"))
print(f"threshold vs clinical mandible (10 mm ROI): Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm, ASSD {m['assd_mm']:.2f} mm")
print(f"bone.stl: {r['triangle_count']} triangles, watertight={r['watertight']}, shells={r['shell_count']}, "
      f"volume {r['volume_ml']:.0f} mL (voxels {r['mask_volume_ml']:.0f} mL), print_ready={r['print_ready']}")
PY
echo "== done: results in $out/ (open the .seg.nrrd and .stl files in 3D Slicer; picture: $out/demo.png)"
