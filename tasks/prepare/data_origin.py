"""Where a collection came from: a synthetic one from ``tomoflow synth`` (and at which lesion level) or not.

The report's summary says "synthetic" and the difficulty level when the data were generated,
so no one reads the demo's figures as clinical ones. ``tomoflow synth`` writes
``tomoflow-synth.json`` beside the CSVs when its lesions are not the default ``easy`` draw
(the default keeps the collection's files exactly as they always were); a default collection
is recognised by the UID root its ``classic_path`` column uses, which is tomoflow's own
(``synth.layout.UID_PREFIX``; the pipeline does not import ``synth``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["SYNTH_MARKER", "SYNTH_UID_ROOT", "data_origin"]

#: The file ``tomoflow synth`` writes for a non-default lesion level.
SYNTH_MARKER = "tomoflow-synth.json"
#: The UID root of every UID ``tomoflow synth`` writes (a test checks it against synth.layout).
SYNTH_UID_ROOT = "1.2.826.0.1.3680043.10.1234."
_LEVELS = ("easy", "moderate", "subtle", "custom")


def data_origin(data_root: str | Path | None) -> dict[str, Any]:
    """``{"synthetic": bool, "difficulty": level or None}`` of the collection under ``data_root``.

    Only these two values leave this function (nothing from a CSV row or a DICOM header).
    """
    if not data_root:
        return {"synthetic": False, "difficulty": None}
    root = Path(data_root)
    marker = root / SYNTH_MARKER
    if marker.is_file():
        try:
            level = json.loads(marker.read_text()).get("difficulty")
        except (OSError, ValueError, AttributeError):
            level = None
        return {"synthetic": True, "difficulty": level if level in _LEVELS else None}
    for path in sorted(root.glob("BCS-DBT*file-paths*.csv")):
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                row = next(csv.DictReader(fh), None)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        classic = (row or {}).get("classic_path") or ""
        if SYNTH_UID_ROOT in classic:
            return {"synthetic": True, "difficulty": "easy"}
    return {"synthetic": False, "difficulty": None}
