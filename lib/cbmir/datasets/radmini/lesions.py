"""Slice-level findings from a lesion mask, and RTSTRUCT outlines rasterised onto CT slices.

Rule (the same for every masked source, documented in the data card): a slice is `lesion` when the mask covers
at least `MIN_LESION_AREA_MM2` on it; it is `normal` when no slice within `LESION_MARGIN_MM` of it (along the
slice axis, itself included) carries any mask; anything else (a lesion edge, or a slice next to one) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

MIN_LESION_AREA_MM2 = 20.0  # about a 5 mm disc
LESION_MARGIN_MM = 5.0  # a normal slice lies more than this from every slice with mask


def slice_findings(areas_mm2: Sequence[float], z_mm: Sequence[float]) -> list[str | None]:
    """`lesion`, `normal` or None (left out) for each slice, from its mask area and its position."""
    areas = np.asarray(areas_mm2, dtype=np.float64)
    z = np.asarray(z_mm, dtype=np.float64)
    if areas.shape != z.shape:
        raise ValueError(f"areas {areas.shape} and positions {z.shape} differ in length")
    masked = z[areas > 0]
    out: list[str | None] = []
    for area, pos in zip(areas.tolist(), z.tolist(), strict=True):
        if area >= MIN_LESION_AREA_MM2:
            out.append("lesion")
        elif masked.size == 0 or float(np.min(np.abs(masked - pos))) > LESION_MARGIN_MM:
            out.append("normal")
        else:
            out.append(None)
    return out


def polygon_mask(
    points_mm: np.ndarray,
    origin_mm: Sequence[float],
    spacing_mm: Sequence[float],
    shape: tuple[int, int],
) -> np.ndarray:
    """Rasterise one closed contour (`[P, 2]` patient x, y in mm) onto a `[rows, cols]` boolean slice.

    `origin_mm` is the slice's ImagePositionPatient (x, y of the centre of pixel (0, 0)) and `spacing_mm`
    its PixelSpacing (row spacing, column spacing); the slice must be axial with identity orientation.
    Pixel centres inside or on the outline are set (PIL polygon fill with outline).
    """
    pts = np.asarray(points_mm, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"a contour needs >= 3 points of (x, y), got shape {pts.shape}")
    cols = (pts[:, 0] - float(origin_mm[0])) / float(spacing_mm[1])
    rows = (pts[:, 1] - float(origin_mm[1])) / float(spacing_mm[0])
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(
        [(float(c), float(r)) for c, r in zip(cols, rows, strict=True)], fill=1, outline=1
    )
    return np.asarray(canvas, dtype=bool)


def rtstruct_contours(rtstruct, roi_name: str) -> list[np.ndarray]:
    """The closed planar contours (`[P, 3]` x, y, z in mm) of the ROI named `roi_name` in an RTSTRUCT dataset."""
    numbers = [
        int(r.ROINumber) for r in rtstruct.StructureSetROISequence if str(r.ROIName).strip() == roi_name
    ]
    if not numbers:
        names = [str(r.ROIName) for r in rtstruct.StructureSetROISequence]
        raise ValueError(f"RTSTRUCT has no ROI named {roi_name!r}; it has {names}")
    out = []
    for roi in rtstruct.ROIContourSequence:
        if int(roi.ReferencedROINumber) != numbers[0]:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            out.append(np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3))
    return out
