"""The LUNA16 release's folder layout: ``subset0`` ... ``subset9`` holding ``<seriesuid>.mhd/.raw``."""

from __future__ import annotations

from pathlib import Path


def find_scans(data_dir: str | Path) -> dict[str, Path]:
    """Map each series uid to its ``.mhd`` file under ``data_dir/subset*/``.

    Only ``subset*`` folders are scanned: ``seg-lungs-LUNA16/`` (lung masks with the same names)
    and any other folder are ignored.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: a series uid appears in two subsets.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"expected the LUNA16 folder {data_dir} (subset*/<seriesuid>.mhd, annotations.csv, "
            "candidates.csv), but it does not exist"
        )
    scans: dict[str, Path] = {}
    for mhd_path in sorted(data_dir.glob("subset*/*.mhd")):
        uid = mhd_path.stem
        if uid in scans:
            raise ValueError(f"series {uid} appears twice: {scans[uid]} and {mhd_path}")
        scans[uid] = mhd_path
    return scans


class ReleaseScans:
    """The scans of a LUNA16 folder, found once and on first use: what the sources of both tasks
    (candidates, nodule masks) read their images from.

    Raises (from ``scans``):
        FileNotFoundError: no folder, or no ``subset*/<seriesuid>.mhd`` in it.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._scans: dict[str, Path] | None = None

    @property
    def scans(self) -> dict[str, Path]:
        if self._scans is None:
            self._scans = find_scans(self.data_dir)
            if not self._scans:
                raise FileNotFoundError(
                    f"no scans found: expected {self.data_dir}/subset*/<seriesuid>.mhd files"
                )
        return self._scans


def subset_number(mhd_path: Path) -> int:
    """The fold of a scan: the number of its ``subsetK`` folder (-1 outside one)."""
    digits = mhd_path.parent.name.removeprefix("subset")
    return int(digits) if digits.isdigit() else -1
