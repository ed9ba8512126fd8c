#!/usr/bin/env bash
# Reproduce Resources/Models/headneck-ct: the exact sequence of segdeep train runs that produced
# the shipped weights, then the evaluation that fills the card. Run from the repository root with
# the shared OpenKBP data beside it (DATA). The work folder keeps checkpoints between phases.
#
# The original run was interrupted several times (time limits, by hand) and resumed with new
# settings; each phase below stops where the original did (--stop-at-step / --iterations), so the
# learning-rate schedule and random streams are replayed. Timing-dependent stops of the original
# (--max-minutes) are replaced by the step they stopped at.
set -euo pipefail
DATA=${DATA:-../shared/data/openkbp}
WORK=${WORK:-/tmp/segdeep_train/run1}
OUT=${OUT:-Resources/Models/headneck-ct}
CACHE=${CACHE:-/tmp/segdeep_cache}

COMMON=(--train "$DATA/train" --validation "$DATA/validation" -o "$OUT" --work-dir "$WORK"
  --name headneck-ct --dataset openkbp --spacing 3.906 3.906 2.5 --patch 64 80 80
  --channels 16 32 64 128 --batch-size 2 --lr 2e-3 --precision bf16 --val-cases 4
  --checkpoint-every 25 --cache-dir "$CACHE" --seed 0 --no-progress)

# 1. steps 0-520 (a 520-step schedule)
segdeep train "${COMMON[@]}" --iterations 520 --val-every 130
# 2. steps 520-550 of a 1500-step schedule (stopped by hand in the original)
segdeep train "${COMMON[@]}" --iterations 1500 --val-every 250 --resume --stop-at-step 550
# 3. steps 550-1000 of a 1000-step schedule
segdeep train "${COMMON[@]}" --iterations 1000 --val-every 250 --resume
# 4. steps 1000-1254 of a 1300-step schedule (stopped by its time limit in the original)
segdeep train "${COMMON[@]}" --iterations 1300 --val-every 250 --resume --stop-at-step 1254
# 5. steps 1254-1825 of a 4800-step schedule (stopped by hand to add class weights)
segdeep train "${COMMON[@]}" --iterations 4800 --val-every 500 --resume --stop-at-step 1825
# 6. from step 1825 with median-frequency cross-entropy weights (oesophagus, larynx)
segdeep train "${COMMON[@]}" --iterations 5000 --val-every 500 --resume --ce-weighting median-frequency \
  ${PHASE6_STOP:+--stop-at-step "$PHASE6_STOP"}

# The model's own clean-up (detached mandible pieces under 2 mL), part of the card; chosen on the
# 1 mm head CT's upper teeth and checked on the validation split (docs/training.md). This is 1.0.0.
python scripts/card_postprocessing.py "$OUT" --min-island-ml mandible=2

# 7. version 1.1.0: 1800 steps fine-tuned from 1.0.0 (peak learning rate 5e-4, poly decay), the
# checkpoint selected on all 33 validation CTs, the forgetting guard on them too. Shipped only
# because it beat 1.0.0 on the 33 CTs (docs/finetune_1.1.0/ship_rule.md, comparison.json).
rm -rf "$WORK/v1.0.0" && cp -r "$OUT" "$WORK/v1.0.0"
segdeep train --train "$DATA/train" --validation "$DATA/validation" -o "$OUT" --work-dir "$WORK/finetune" \
  --name headneck-ct --dataset openkbp --init-from "$WORK/v1.0.0" --batch-size 2 --lr 5e-4 --precision bf16 \
  --val-cases 33 --checkpoint-every 25 --cache-dir "$CACHE" --seed 1 --iterations 1800 --val-every 600 \
  --ce-weighting median-frequency --threads 2 --no-progress
python scripts/card_postprocessing.py "$OUT" --min-island-ml mandible=2
python scripts/card_release.py "$OUT" --version 1.1.0 --schedule "with a short CPU schedule: 5000 steps (163 min) \
from scratch (version 1.0.0), then 1800 fine-tuning steps (75 min, training.init_from) on two CPU cores"

# Evaluation on the validation split, recorded in the card with the validation entropy (the
# out-of-distribution check; segdeep train records the training reference statistics).
segdeep evaluate "$OUT" "$DATA/validation" -o "$WORK/eval_validation" --threshold-from "$DATA/train" \
  --record-in-card --cache-dir "$CACHE" --overwrite --no-progress
# The measured per-structure limits, appended to the card's limitations.
python scripts/card_limitations.py "$OUT" --note "${CARD_NOTE:-Refinement (model+refine) does not help the mandible \
on validation (median Dice 0.84 vs 0.87). On a 1 mm head CT without the mandible body it labels the mandibular rami; \
the upper teeth it may also call mandible (small pieces) are removed by the clean-up in its card. Other body regions: \
the out-of-distribution check says mismatch (abdomen) and the labels are withheld by default; the segmentation \
itself is meaningless there.}"
