"""Writing files so that nothing is ever half-written: every writer of luna goes through here.

A file is written under a temporary sibling name that says who writes it (host, process), flushed
to disk and renamed over its final name; a reader sees the old file or the new one, never a part.
A folder (a generated dataset) is written the same way, as a staging folder renamed at the end.
A full disk is reported with the file, the bytes it needed and the space left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class DiskFullError(OSError):
    """No space was left for a file; the message names it, the bytes it needed and the free space."""


def temporary_name(path: Path) -> Path:
    """A temporary sibling of ``path`` that names its writer (host, pid) so stale ones can be found."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], size_hint: int = 0) -> None:
    """Write ``path`` through a temporary file, fsync, rename.

    Raises:
        DiskFullError: the device is full (naming the file, ``size_hint`` bytes and the free space).
        OSError: any other failure; the temporary file is removed either way.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        full = error.errno == errno.ENOSPC or (error.errno is None and "requested and" in str(error))
        if not full or isinstance(error, DiskFullError):
            raise
        free = shutil.disk_usage(path.parent).free
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on the device for {path}: it needs {size_hint:,} bytes, "
            f"{free:,} are free in {path.parent}",
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    data = text.encode()
    write_atomic(path, lambda handle: handle.write(data), len(data))


def write_json_atomic(path: str | Path, payload: object, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of dead processes of this host (a killed writer)."""
    host = socket.gethostname()
    for temporary in folder.glob(".*.tmp"):
        _, _, tail = temporary.name.rpartition(f".{host}.")
        pid = tail.removesuffix(".tmp")
        if pid.isdigit() and not process_alive(int(pid)):
            temporary.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists (the writer of a temporary, a sweep's worker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writable_problem(folder: str | Path) -> str | None:
    """Why files cannot be written into ``folder``, or None when they can; creates nothing (the
    nearest existing folder above it is tried instead when it does not exist yet)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{folder} is not writable: {probe} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        return f"{folder} is not writable: {error.strerror or error}"
    return None


def write_folder_atomically(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a staging folder beside ``out_dir`` and rename it when complete.

    An interrupted run leaves no half-written folder, and an existing ``out_dir`` is never
    touched: it must not exist yet.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; phantom data is only written to a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        write(staging)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def folder_size(folder: str | Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(file.stat().st_size for file in Path(folder).rglob("*") if file.is_file())


def describe_bytes(size: int) -> str:
    """``1.2 GB``: a size as a reader wants it (decimal units, as disks are sold)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
