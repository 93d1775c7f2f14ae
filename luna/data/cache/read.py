"""The crop cache, read side: every crop cut once, stored as int16, served as verified views.

The book's pipeline pickles each float32 crop into a disk cache (~160 GB, hours to fill). Here a
build (``luna.data.cache.build``) reads each volume once, cuts all of its crops and writes them to
one ``.npy`` file per volume; reads are slices of memory-mapped arrays (2 bytes a voxel).

Layout of one cache (``<cache_dir>/luna-<key>/``)::

    images/<name>.npy      int16 [n, I, R, C]: the image's crops, in table order
    images/<name>.json     per table row of the image: centre (IRC, null when outside), crop
                           start and checksum, or the read error; its presence marks the image done
    columns/<column>.npy   one value per served crop, in table order (see ``COLUMNS``)
    manifest.json          key, settings, the images (id, path, group, fold), class names, counts;
                           written last: the cache is complete

Every crop has a checksum (``crop_checksum``) recorded when it was cut; a process checks each
crop the first time it serves it. A crop that does not match is never served: it is cut again
from its volume, with a warning naming the image, and the image is marked for rebuilding.

Everything here holds numpy arrays, never a Python object per crop, and the columns are
memory-mapped: DataLoader workers (forked or spawned) share their pages instead of copying them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
FAILURE = "build-failed.txt"
IMAGES = "images"
COLUMNS_DIR = "columns"
# one value per served crop: its table row, image, position in the image's file, class, centre in
# mm, centre voxel, the centre's voxel inside the crop, and the crop's checksum
COLUMNS = ("row", "image", "image_row", "label", "center_xyz", "center_irc", "offset_irc", "checksum")


class CacheBuildError(RuntimeError):
    """The cache could not be built or used (unreadable volume, nothing to serve, no disk space...)."""


def crop_checksum(crop: np.ndarray) -> int:
    """A 64-bit checksum of a crop's bytes: the wrapped sum of its 8-byte words, plus its tail bytes.

    Against corruption on disk (flipped bits, truncation, swapped crops), not against tampering;
    one pass over the bytes, at memory speed.
    """
    data = np.ascontiguousarray(crop).reshape(-1)
    if data.nbytes % 8 == 0:  # the common case (the book's crop is 147,456 bytes): one reduction
        return int(data.view(np.uint64).sum(dtype=np.uint64))
    data = data.view(np.uint8)
    whole = len(data) // 8 * 8
    return int(data[:whole].view(np.uint64).sum(dtype=np.uint64) + data[whole:].sum(dtype=np.uint64))


class CropCache:
    """A complete cache, opened read-only. ``crop(k)`` is a verified int16 view of crop ``k``.

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
            raise CacheBuildError(f"{manifest_path} is damaged ({error}); prepare_data() rebuilds it") from None
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheBuildError(f"{self.path}: cache format {self.manifest.get('format_version')}, expected {FORMAT_VERSION}")
        images = self.manifest["images"]
        self.image_ids: list[str] = [entry["id"] for entry in images]
        self.image_files: list[str] = [entry["file"] for entry in images]
        self.image_paths: list[str] = [entry["path"] for entry in images]
        self.groups: list[str] = [entry["group"] for entry in images]
        self.folds = np.array([entry["fold"] for entry in images], dtype=np.int64)
        self.class_names: list[str] = self.manifest["class_names"]
        self.width_irc: tuple[int, int, int] = tuple(self.manifest["width_irc"])
        self._open()

    def _open(self) -> None:
        self._columns: dict[str, np.ndarray] = {}
        self._maps: dict[int, np.ndarray] = {}
        self._verified: np.ndarray | None = None
        self._recut: tuple[int, np.ndarray] | None = None
        self._where: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def column(self, name: str) -> np.ndarray:
        """A per-crop column (``COLUMNS`` or an extra such as ``diameter_mm``): a read-only array over
        the memory-mapped file (shared between processes, never copied)."""
        values = self._columns.get(name)
        if values is None:
            path = self.path / COLUMNS_DIR / f"{name}.npy"
            try:
                values = np.asarray(np.load(path, mmap_mode="r"))  # plain ndarray: fast scalar indexing
            except (OSError, ValueError) as error:
                raise CacheBuildError(f"{path} cannot be read ({error}); prepare_data() rebuilds it") from None
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

    @property
    def offset_irc(self) -> np.ndarray:
        """Each crop's centre voxel inside the crop (not the middle near a volume's border)."""
        return self.column("offset_irc")

    def __getstate__(self) -> dict:
        return {"path": self.path, "manifest": self.manifest, "image_ids": self.image_ids,
                "image_files": self.image_files, "image_paths": self.image_paths, "groups": self.groups,
                "folds": self.folds, "class_names": self.class_names, "width_irc": self.width_irc}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def image_crops(self, image: int) -> np.ndarray:
        """All crops of one image, memory-mapped ``[n, I, R, C]``."""
        crops = self._maps.get(image)
        if crops is None:
            path = self.path / IMAGES / f"{self.image_files[image]}.npy"
            try:
                crops = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise CacheBuildError(f"{path} cannot be read ({error}); prepare_data() rebuilds it") from None
            self._maps[image] = crops
        return crops

    def crop(self, k: int) -> np.ndarray:
        """Crop ``k`` as a read-only int16 view of shape ``width_irc``, checked the first time it is served."""
        if self._where is None:
            self._where = (self.column("image"), self.column("image_row"), self.column("checksum"))
            self._verified = np.zeros(len(self), dtype=bool)
        image_of, image_row, checksum = self._where
        image = int(image_of[k])
        crops = self._maps.get(image)
        if crops is None:
            crops = self.image_crops(image)
        crop = crops[image_row[k]]
        if not self._verified[k]:
            if crop_checksum(crop) != int(checksum[k]):
                return self._recover(k, image)
            self._verified[k] = True
        return crop

    def _recover(self, k: int, image: int) -> np.ndarray:
        """Cut crop ``k`` again from its volume (its cached bytes are damaged) and mark the image for rebuilding."""
        from luna.data.volume import Volume  # SimpleITK only in the rare process that needs it

        name, path = self.image_ids[image], self.image_paths[image]
        log.warning("crop %d of image %s in %s is damaged (checksum mismatch): serving it cut again from %s; "
                    "the image's crops are rebuilt by the next prepare_data()", k, name, self.path, path)
        record = self.path / IMAGES / f"{self.image_files[image]}.json"
        try:
            record.unlink(missing_ok=True)  # no record: the next build cuts this image again
        except OSError as error:
            log.warning("cannot mark %s for rebuilding (%s)", record, error.strerror or error)
        if self._recut is None or self._recut[0] != image:
            window, scale = self.manifest["intensity_window"], self.manifest["intensity_scale"]
            self._recut = (image, Volume.read(path, window, scale).voxels)
        start = np.asarray(self.column("center_irc")[k]) - np.asarray(self.column("offset_irc")[k])
        crop = self._recut[1][tuple(slice(int(s), int(s) + w) for s, w in zip(start, self.width_irc))]
        if crop_checksum(crop) != int(self.column("checksum")[k]):
            raise CacheBuildError(f"image {name} ({path}) no longer gives the crops it gave when the cache was built; "
                                  f"the volume changed: delete the cache folder {self.path} and rebuild it")
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
