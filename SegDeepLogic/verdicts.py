"""The out-of-distribution verdicts as shown to people: labels, one-sentence headlines, colours.

:func:`SegDeepLogic.plausibility.check_plausibility` gives a verdict (``ok``, ``caution``,
``mismatch`` or ``unchecked``); the report, the Slicer panel and the CLI show it with these texts,
so all three say the same. Standard library only: the Slicer panel reads it at start-up.
"""

from __future__ import annotations

__all__ = ["PLAUSIBILITY_COLORS", "PLAUSIBILITY_DEFINITION", "PLAUSIBILITY_HEADLINES", "PLAUSIBILITY_LABELS", "VERDICTS"]

VERDICTS = ("ok", "caution", "mismatch", "unchecked")
"""Every verdict, from best to worst-informed."""

PLAUSIBILITY_LABELS = {"mismatch": "MISMATCH", "caution": "CAUTION", "ok": "OK", "unchecked": "NOT CHECKED"}
"""Verdict as a short upper-case label (banners, tables)."""

PLAUSIBILITY_HEADLINES = {
    "mismatch": "This CT does not look like the anatomy the model was trained on: do not use this segmentation.",
    "caution": "Parts of this CT or of the result are outside the range of the model's training data: review the "
    "findings before using it.",
    "ok": "The CT and the result are within the range of the model's training data.",
    "unchecked": "The result was not compared with the model's training data (see the finding below).",
}
"""One sentence per verdict; the findings follow it wherever it is shown."""

PLAUSIBILITY_COLORS = {  # background, border, text
    "mismatch": ("#fde7e9", "#b00020", "#5f0010"),
    "caution": ("#fff4d6", "#e0a800", "#4d3800"),
    "ok": ("#e6f4ea", "#137333", "#0d4f24"),
    "unchecked": ("#eef1f6", "#8a94a6", "#333a47"),
}
"""Banner colours per verdict (the HTML report's banner and the Slicer panel's)."""

PLAUSIBILITY_DEFINITION = (
    "Out-of-distribution check (SegDeepLogic.plausibility): the body's size and tissue composition on the model "
    "grid, each structure's volume, the presence at a plausible size of the structures contoured in nearly every "
    "training CT, and the network's uncertainty inside each structure are compared with the model's training "
    "(and validation) data recorded in its model card. mismatch: not the anatomy the model knows, do not use the "
    "output; caution: something is outside the training range (listed); ok: nothing is; unchecked: nothing to "
    "compare with."
)
"""What the check is, for the report's definitions."""
