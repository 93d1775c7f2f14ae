"""Writing detections: ``detections.csv`` in LUNA16's submission format, and its record.

``seriesuid,coordX,coordY,coordZ,probability`` (plus ``malignancy`` with a malignancy classifier),
the probability at full precision (the official 100-marks-per-scan cap drops every mark tied at
the 101st, and rounding makes ties). Beside it, ``detections.json`` says what made the rows (the
checkpoints, the data folder, the settings) and which scans were detected, with or without rows:
``luna.evaluate`` scores those scans, as it does for ``luna.fit predict``'s record.

Rows are appended to a part file as each scan finishes; the CSV appears, complete, only at the end.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from luna.detection.pipeline import Findings
from luna.io.csvfile import PROBABILITY_COLUMN, XYZ_COLUMNS
from luna.io.files import write_atomic, write_json_atomic


class DetectionsWriter:
    """Rows of every scan, then the CSV and its record.

    Args:
        path: the CSV to write (its record is the same name with ``.json``).
        malignancy: whether rows carry a ``malignancy`` column.
    """

    def __init__(self, path: str | Path, malignancy: bool) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(f".{self.path.name}.part")
        self.columns = [
            "seriesuid",
            *XYZ_COLUMNS,
            PROBABILITY_COLUMN,
            *(["malignancy"] if malignancy else []),
        ]
        self.rows, self.images, self.failed, self.seconds = 0, [], {}, []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.part.write_text("")

    def add(self, image_id: str, findings: Findings, seconds: float) -> None:
        """A detected scan's rows (none is a valid answer: a scan without findings)."""
        with self.part.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for k in range(len(findings)):
                extra = [repr(float(findings.malignancy[k]))] if findings.malignancy is not None else []
                writer.writerow(
                    [
                        image_id,
                        *map(repr, findings.center_xyz[k].tolist()),
                        repr(float(findings.probability[k])),
                        *extra,
                    ]
                )
        self.rows += len(findings)
        self.images.append(image_id)
        self.seconds.append(seconds)

    def fail(self, image_id: str, reason: str) -> None:
        """A scan that could not be detected (it is named in the record, not scored)."""
        self.failed[image_id] = reason

    def close(self, about: dict) -> tuple[Path, Path]:
        """Write the CSV (header and every row) and its record; returns both paths."""
        header = (",".join(self.columns) + "\r\n").encode()

        def concatenate(out) -> None:
            out.write(header)
            with self.part.open("rb") as handle:
                shutil.copyfileobj(handle, out)

        write_atomic(self.path, concatenate, self.part.stat().st_size + len(header))
        self.part.unlink()
        record = self.path.with_suffix(".json")
        write_json_atomic(
            record,
            {
                "rows": self.rows,
                "images": self.images,
                "failed": self.failed,
                "seconds_per_scan": self.seconds,
                **about,
            },
            indent=1,
        )
        return self.path, record
