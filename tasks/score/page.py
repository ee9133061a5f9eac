"""``worklist.html``: the scored studies, highest first, each with its top frame and Grad-CAM overlay.

Self-contained (images inline as ``data:`` PNGs, no script, no remote address) and
pseudonymous: patients and studies are shown only as keyed hashes of their ids
(:func:`tasks.core.pseudonyms.pseudonym`, salted per output root), never the ids themselves.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.files import png_bytes

#: Studies shown with images; the rest are listed by score without them.
MAX_THUMBNAILS = 100


def _png_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 overlay of a Grad-CAM map (``[0, 1]``, jet) on a gray uint8 image."""
    from matplotlib import colormaps

    gray = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    weight = alpha * np.clip(heat, 0, 1)[..., None]
    return np.clip(gray * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)


def top_frame_views(model: Any, items: list[dict[str, Any]], *, png_size: int, input_size: int) -> list[dict[str, Any]]:
    """For each ``{path, view, frame}``: the top frame as the model saw it and its Grad-CAM overlay (data URIs)."""
    import torch
    from PIL import Image

    from models.training.augment import eval_transforms
    from models.explain.gradcam import gradcam
    from tasks.reader.frames import read_frames

    to_input = eval_transforms(input_size)
    inputs: list[Any] = []
    for item in items:
        try:
            (frame,) = read_frames(item["path"], [int(item["frame"])], view=item["view"], image_size=png_size)
            inputs.append(to_input(Image.fromarray(frame.image, mode="L")))
        except (ValueError, NotImplementedError, OSError):
            inputs.append(None)
    readable = [x for x in inputs if x is not None]
    heats = iter(gradcam(model, torch.stack(readable)).numpy() if readable else [])  # one batched pass
    out: list[dict[str, Any]] = []
    for x in inputs:
        if x is None:
            out.append({"image": None, "overlay": None})
            continue
        image = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        out.append({"image": _png_uri(np.repeat(image[..., None], 3, axis=2)),
                    "overlay": _png_uri(overlay(image, next(heats)))})
    return out


def _fmt(value: Any) -> str:
    return "&ndash;" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{float(value):.3f}"


def worklist_html(studies: pd.DataFrame, images: list[dict[str, Any]], summary: dict[str, Any], *,
                  salt: bytes) -> str:
    """The page: a header with the run, threshold and counts, then one row per study."""
    from tasks.core.pseudonyms import pseudonym

    e = html.escape
    rows = []
    for i, row in studies.reset_index(drop=True).iterrows():
        pictures = images[i] if i < len(images) else {"image": None, "overlay": None}
        cells = "".join(f'<td><img alt="{alt}" src="{pictures[k]}" width="128" height="128"></td>'
                        if pictures.get(k) else "<td></td>"
                        for k, alt in (("image", "top frame"), ("overlay", "Grad-CAM")))
        flagged = row["flagged"]
        flag = "" if pd.isna(flagged) else ("FLAGGED" if bool(flagged) else "below threshold")
        rows.append(
            f"<tr class=\"{'flag' if flag == 'FLAGGED' else ''}\"><td>{i + 1}</td>"
            f"<td>{e(pseudonym(row['patient_id'], salt))}</td><td>{e(pseudonym(row['study_uid'], salt, prefix='S-'))}</td>"
            f"<td>{_fmt(row['score_max'])}</td><td>{_fmt(row['score_topk'])}</td>"
            f"<td>{e(str(row['top_view'] or ''))} {'' if pd.isna(row['top_frame']) else int(row['top_frame'])}</td>"
            f"<td>{flag}</td><td>{e(str(row['status']).split(':')[0])}</td>{cells}</tr>")
    s = summary
    head = (f"<p>Run checkpoint SHA-256 <code>{e(str(s['checkpoint_sha256'])[:16])}</code>&hellip;; threshold "
            f"<b>{s['threshold']:.3f}</b> ({e(str(s['threshold_source']))}). Volumes listed {s['listed']}, scored "
            f"{s['scored']} (reused {s['reused']}), not scored {s['failed']}; frame stride {s['stride']}, "
            f"top-k mean of {s['topk']} frames. A study's score is its highest frame probability over all its "
            f"volumes. Ids are keyed pseudonyms of this output folder.</p>")
    more = "" if len(studies) <= len(images) else (
        f"<p>Images shown for the first {len(images)} studies only.</p>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tomoflow worklist</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 6px;text-align:left}tr.flag{background:#fde2e2}</style></head><body>"
            "<h1>Worklist: studies by model score</h1>" + head + more +
            "<table><tr><th>#</th><th>patient</th><th>study</th><th>score (max)</th><th>score (top-k)</th>"
            "<th>top frame</th><th>flag</th><th>status</th><th>top frame</th><th>Grad-CAM</th></tr>"
            + "".join(rows) + "</table></body></html>")


def write_worklist_html(path: str | os.PathLike[str], studies: pd.DataFrame, images: list[dict[str, Any]],
                        summary: dict[str, Any], *, salt: bytes) -> Path:
    """Write :func:`worklist_html` atomically."""
    from tasks.core.files import atomic_write_text

    return atomic_write_text(path, worklist_html(studies, images, summary, salt=salt))
