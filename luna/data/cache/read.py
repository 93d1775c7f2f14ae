"""The crop cache, read side: every crop cut once, stored as int16, served as verified views.

The book's pipeline pickles each float32 crop into a disk cache (~160 GB, hours to fill). Here a
build (``luna.data.cache.build``) reads each volume once, cuts all of its crops (one per view:
a native crop, a physical-space crop, several fields of view) and writes them to one ``.npy``
file per volume and view; reads are slices of memory-mapped arrays (2 bytes a voxel).

Layout of one cache (``<cache_dir>/luna-<key>/``)::

    images/<name>.view<k>.npy   int16 [n, I, R, C]: the image's crops of view k, in table order
    images/<name>.json          per table row of the image: its voxel (IRC, null when outside) and,
                                per view, the centre's voxel in the crop and the crop's checksum;
                                or the read error. Its presence marks the image done
    columns/<column>.npy        one value per served crop, in table order (see ``COLUMNS``, and
                                ``VIEW_COLUMNS`` once per view: ``<column>.view<k>.npy``)
    manifest.json               key, settings (views, intensities), the images (id, path, group,
                                fold, spacing), class names, counts; written last: the cache is complete

Every crop has a checksum (``crop_checksum``, XXH3-64 of its bytes) recorded when it was cut; a
process checks each crop the first time it serves it. A crop that does not match is never
served: it is cut again from its volume, with a warning naming the image, and the image is marked
for rebuilding.

Everything here holds numpy arrays, never a Python object per crop, and the columns are
memory-mapped: DataLoader workers (forked or spawned) share their pages instead of copying them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import xxhash

from luna.data.crops import View

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
MANIFEST = "manifest.json"
FAILURE = "build-failed.txt"
IMAGES = "images"
COLUMNS_DIR = "columns"
# one value per served crop: its table row, image, position in the image's files, class, centre in
# mm, the centre's nearest voxel of the image
COLUMNS = ("row", "image", "image_row", "label", "center_xyz", "center_irc")
# one value per served crop and view: the centre's voxel inside the crop, and the crop's checksum
VIEW_COLUMNS = ("offset_irc", "checksum")


class CacheBuildError(RuntimeError):
    """The cache could not be built or used (unreadable volume, nothing to serve, no disk space...)."""


def crop_checksum(crop: np.ndarray) -> int:
    """XXH3-64 of a crop's bytes: sees flipped bits, truncation, swapped crops and reordered bytes.

    Against corruption on disk, not against tampering. XXH3 runs at memory speed (about 5 µs for
    the book's 147 KB crop here), so checking a crop on its first read costs little
    (``scripts/bench_data.py`` measures it).
    """
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(crop))


def view_column(name: str, view: int) -> str:
    """The column of ``name`` (one of ``VIEW_COLUMNS``) for view number ``view``."""
    return f"{name}.view{view}"


def image_file(file: str, view: int) -> str:
    """The ``.npy`` file name of an image's crops of view number ``view``."""
    return f"{file}.view{view}.npy"


class CropCache:
    """A complete cache, opened read-only. ``crop(k, view)`` is a verified int16 view of crop ``k``.

    Picklable for DataLoader workers: only the path and the manifest travel; memory maps are
    reopened lazily in each process.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete crop cache (no {MANIFEST})")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CacheBuildError(
                f"{manifest_path} is damaged ({error}); prepare_data() rebuilds it"
            ) from None
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheBuildError(
                f"{self.path}: cache format {self.manifest.get('format_version')}, expected {FORMAT_VERSION}"
            )
        images = self.manifest["images"]
        self.image_ids: list[str] = [entry["id"] for entry in images]
        self.image_files: list[str] = [entry["file"] for entry in images]
        self.image_paths: list[str] = [entry["path"] for entry in images]
        self.groups: list[str] = [entry["group"] for entry in images]
        self.folds = np.array([entry["fold"] for entry in images], dtype=np.int64)
        # each image's voxel size along I, R, C (NaN for an image that was skipped)
        self.image_spacing_irc = np.array(
            [entry.get("spacing_irc") or [np.nan] * 3 for entry in images], dtype=np.float64
        ).reshape(-1, 3)
        self.class_names: list[str] = self.manifest["class_names"]
        self.views: list[View] = [
            View(tuple(view["width_irc"]), None if view["spacing_mm"] is None else tuple(view["spacing_mm"]))
            for view in self.manifest["views"]
        ]
        self._open()

    def _open(self) -> None:
        self._columns: dict[str, np.ndarray] = {}
        self._maps: dict[tuple[int, int], np.ndarray] = {}
        self._verified: np.ndarray | None = None
        self._recut: tuple[int, object] | None = None
        self._where: tuple[np.ndarray, np.ndarray] | None = None
        self._checksums: list[np.ndarray | None] = [None] * len(self.views)

    @property
    def width_irc(self) -> tuple[int, int, int]:
        """The size of the crops of the first view."""
        return self.views[0].width_irc

    def column(self, name: str) -> np.ndarray:
        """A per-crop column (``COLUMNS``, ``view_column(...)`` or an extra such as ``diameter_mm``):
        a read-only array over the memory-mapped file (shared between processes, never copied)."""
        values = self._columns.get(name)
        if values is None:
            path = self.path / COLUMNS_DIR / f"{name}.npy"
            try:
                values = np.asarray(np.load(path, mmap_mode="r"))  # plain ndarray: fast scalar indexing
            except (OSError, ValueError) as error:
                raise CacheBuildError(
                    f"{path} cannot be read ({error}); prepare_data() rebuilds it"
                ) from None
            self._columns[name] = values
        return values

    def __len__(self) -> int:
        return int(self.manifest["crops"])

    @property
    def labels(self) -> np.ndarray:
        return self.column("label")

    @property
    def image_of(self) -> np.ndarray:
        """Each crop's image (an index into ``image_ids``)."""
        return self.column("image")

    @property
    def center_xyz(self) -> np.ndarray:
        return self.column("center_xyz")

    def offset_irc(self, view: int = 0) -> np.ndarray:
        """Each crop's centre voxel inside its crop of ``view`` (not the middle near a volume's
        border, for native crops)."""
        return self.column(view_column("offset_irc", view))

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "manifest": self.manifest,
            "image_ids": self.image_ids,
            "image_files": self.image_files,
            "image_paths": self.image_paths,
            "groups": self.groups,
            "folds": self.folds,
            "image_spacing_irc": self.image_spacing_irc,
            "class_names": self.class_names,
            "views": self.views,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def image_crops(self, image: int, view: int = 0) -> np.ndarray:
        """All crops of one image and view, memory-mapped ``[n, I, R, C]``."""
        crops = self._maps.get((image, view))
        if crops is None:
            path = self.path / IMAGES / image_file(self.image_files[image], view)
            try:
                crops = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise CacheBuildError(
                    f"{path} cannot be read ({error}); prepare_data() rebuilds it"
                ) from None
            self._maps[image, view] = crops
        return crops

    def crop(self, k: int, view: int = 0) -> np.ndarray:
        """Crop ``k`` of ``view`` as a read-only int16 view, checked the first time it is served."""
        if self._where is None:
            self._where = (self.column("image"), self.column("image_row"))
            self._verified = np.zeros((len(self.views), len(self)), dtype=bool)
        image_of, image_row = self._where
        image = int(image_of[k])
        crops = self._maps.get((image, view))
        if crops is None:
            crops = self.image_crops(image, view)
        crop = crops[image_row[k]]
        if not self._verified[view, k]:
            checksums = self._checksums[view]
            if checksums is None:
                checksums = self._checksums[view] = self.column(view_column("checksum", view))
            if crop_checksum(crop) != int(checksums[k]):
                return self._recover(k, image, view)
            self._verified[view, k] = True
        return crop

    def _recover(self, k: int, image: int, view: int) -> np.ndarray:
        """Cut crop ``k`` again from its volume (its cached bytes are damaged) and mark the image for
        rebuilding."""
        from luna.data.cutting import cut_crops  # SimpleITK only in the rare process that needs it
        from luna.data.volume import Volume

        name, path = self.image_ids[image], self.image_paths[image]
        log.warning(
            "crop %d (view %d) of image %s in %s is damaged (checksum mismatch): serving it cut again from "
            "%s; the image's crops are rebuilt by the next prepare_data()",
            k,
            view,
            name,
            self.path,
            path,
        )
        record = self.path / IMAGES / f"{self.image_files[image]}.json"
        try:
            record.unlink(missing_ok=True)  # no record: the next build cuts this image again
        except OSError as error:
            log.warning("cannot mark %s for rebuilding (%s)", record, error.strerror or error)
        if self._recut is None or self._recut[0] != image:
            self._recut = (image, Volume.read(path, window=None))
        window, scale = self.manifest["intensity_window"], self.manifest["intensity_scale"]
        crops, _ = cut_crops(
            self._recut[1], np.asarray(self.center_xyz[k]).reshape(1, 3), self.views[view], window, scale
        )
        crop = crops[0]
        if crop_checksum(crop) != int(self.column(view_column("checksum", view))[k]):
            raise CacheBuildError(
                f"image {name} ({path}) no longer gives the crops it gave when the cache was built; "
                f"the volume changed: delete the cache folder {self.path} and rebuild it"
            )
        crop.flags.writeable = False
        return crop


def open_built_cache(path: str | Path) -> CropCache:
    """Open the cache ``build_cache`` made at ``path``, or re-raise the builder's failure.

    Processes that waited while another one built the cache call this: they get the builder's own
    error message rather than a confusing "not found" (or a hang).
    """
    path = Path(path)
    failure = path / FAILURE
    if not (path / MANIFEST).is_file() and failure.is_file():
        raise CacheBuildError(f"the crop cache build failed in another process: {failure.read_text()}")
    return CropCache(path)
