"""The scans a detection runs on: a LUNA16 folder's (all, some subsets, some series), or volume files."""

from __future__ import annotations

from pathlib import Path

from luna.luna16.release import find_scans, subset_number


def luna16_scans(
    data_dir: Path, subsets: list[int] | None = None, images: list[str] | None = None
) -> list[tuple[str, Path]]:
    """``[(series uid, path)]`` of the scans under ``data_dir/subset*/``, in uid order, kept to
    ``subsets`` and ``images`` when given; no CSV is read.

    Raises:
        FileNotFoundError: no such folder, an unknown series, or no scan left.
    """
    scans = find_scans(data_dir)
    if subsets is not None:
        scans = {uid: path for uid, path in scans.items() if subset_number(path) in subsets}
    if images is not None:
        unknown = sorted(set(images) - set(scans))
        if unknown:
            raise FileNotFoundError(f"--images: no scan {unknown[0]} under {data_dir}/subset*/")
        scans = {uid: scans[uid] for uid in images}
    if not scans:
        raise FileNotFoundError(
            f"no scan to detect under {data_dir}/subset*/ (with the --subsets and --images "
            "given); other volume files: --scans FILE ..."
        )
    return sorted(scans.items())


def volume_files(paths: list[Path]) -> list[tuple[str, Path]]:
    """``[(id, path)]`` of volume files (or DICOM folders): the id is the file's name without its
    extension (``patient.nii.gz``: ``patient``).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"--scans: {missing[0]} does not exist")
    return [(_volume_id(path), path) for path in paths]


def _volume_id(path: Path) -> str:
    name = path.name
    return name.removesuffix(".gz").removesuffix(".nii") if name.endswith(".nii.gz") else path.stem
