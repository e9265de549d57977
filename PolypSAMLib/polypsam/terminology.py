"""Coded segment terminology: what a segment *is*, as DICOM SEG and Slicer record it.

A terminology is ``(category, type)``, each ``(coding scheme, code value, code meaning)``:
SNOMED CT codes as pydicom's code dictionary has them. One home for the presets PolypSAM gives
its segments (in Slicer, in exports) and for Slicer's terminology entry strings.
"""

from __future__ import annotations

Code = tuple[str, str, str]
Terminology = tuple[Code, Code]

MORPHOLOGICALLY_ABNORMAL: Code = ("SCT", "49755003", "Morphologically Altered Structure")
TERMINOLOGY_PRESETS: dict[str, Terminology] = {
    "lesion": (MORPHOLOGICALLY_ABNORMAL, ("SCT", "52988006", "Lesion")),
    "polyp": (MORPHOLOGICALLY_ABNORMAL, ("SCT", "68496003", "Polyp of colon")),
    "mass": (MORPHOLOGICALLY_ABNORMAL, ("SCT", "4147007", "Mass")),
    "tissue": (("SCT", "85756007", "Tissue"), ("SCT", "85756007", "Tissue")),
}
SLICER_TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def slicer_entry(terminology: Terminology | str) -> str:
    """Slicer's terminology entry string (``vtkSegment.SetTerminology``) for a preset or codes."""
    if isinstance(terminology, str):
        terminology = TERMINOLOGY_PRESETS[terminology]
    category, type_ = terminology
    code = "^".join
    return "~".join([SLICER_TERMINOLOGY_CONTEXT, code(category), code(type_), "^^",
                     _ANATOMIC_CONTEXT, "^^", "^^"])


def parse_slicer_entry(entry: str | None) -> Terminology | None:
    """``(category, type)`` of a Slicer terminology entry string, or ``None`` if it has none."""
    parts = (entry or "").split("~")
    if len(parts) < 3:
        return None
    codes = [tuple(p.split("^")) for p in parts[1:3]]
    if any(len(c) != 3 or not c[1] for c in codes):
        return None
    return codes[0], codes[1]  # type: ignore[return-value]
