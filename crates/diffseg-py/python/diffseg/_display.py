"""Views of a `Segmentation` written in Python: supervision's `Detections`, and the
HTML a notebook shows (the overlay beside a legend)."""

import base64
import html
from typing import Any

import numpy as np


def to_supervision(result: Any) -> Any:
    """`supervision.Detections` of the segments, in label order: `xyxy` boxes (exclusive
    right and bottom edges, as `Detections.from_sam` makes them), `mask` bool
    [N, H, W], `class_id` the label, and `data["area"]`."""
    try:
        import supervision
    except ImportError as error:
        raise ImportError(
            "Segmentation.to_supervision() needs the supervision package: "
            "pip install supervision"
        ) from error
    records = result.segments
    if not records:
        return supervision.Detections.empty()
    xywh = np.array([record["bbox"] for record in records], dtype=np.float32)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return supervision.Detections(
        xyxy=xyxy,
        mask=np.stack([record["segmentation"] for record in records]),
        class_id=np.array([record["label"] for record in records], dtype=int),
        data={"area": np.array([record["area"] for record in records], dtype=np.int64)},
    )


def repr_html(result: Any) -> str:
    """The overlay (`_repr_png_`, inline as base64) and a table of the segments: colour
    swatch, label, area in pixels and in percent of the image."""
    png = base64.b64encode(result._repr_png_()).decode("ascii")
    areas = np.bincount(result.labels.ravel(), minlength=result.num_segments)
    pixels = max(int(areas.sum()), 1)
    rows = []
    for label, (colour, area) in enumerate(zip(result.palette(), areas)):
        red, green, blue = (int(channel) for channel in colour)
        swatch = (f'<span style="display:inline-block;width:1.2em;height:1.2em;'
                  f'background:rgb({red},{green},{blue});border:1px solid #777"></span>')
        rows.append(f"<tr><td>{swatch}</td><td>{label}</td><td>{int(area)}</td>"
                    f"<td>{100 * int(area) / pixels:.1f}%</td></tr>")
    title = html.escape(repr(result))
    return (
        '<div class="diffseg-segmentation" style="display:flex;gap:1em;align-items:flex-start">'
        f'<img src="data:image/png;base64,{png}" alt="{title}" style="max-width:70%">'
        '<div style="max-height:32em;overflow-y:auto">'
        f"<div><b>{title}</b></div>"
        '<table class="diffseg-legend">'
        "<thead><tr><th></th><th>label</th><th>area (px)</th><th>area</th></tr></thead>"
        f'<tbody>{"".join(rows)}</tbody></table></div></div>'
    )
