"""Work done once per image, in parallel processes: cutting an image's crops, storing a volume.

Workers fork from the builder where the platform has fork (they start at once and share its
pages), die with it (a killed builder leaves no orphans), and the first error stops the rest.
Peak memory is about ``processes`` images, whatever the dataset's size: each job carries only its
own image's rows.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Pool initializer: a worker ends when the builder does (even when it is SIGKILLed)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the call above took effect
        os._exit(1)


class _Progress:
    """Logs "<what>: N/M <done>" as jobs finish, at most every 10 seconds, and at the end."""

    def __init__(self, total: int, what: str, done: str) -> None:
        self.total, self.finished, self.last = total, 0, time.monotonic()
        self.what, self.done = what, done

    def advance(self) -> None:
        self.finished += 1
        if self.finished == self.total or time.monotonic() - self.last > 10:
            log.info("%s: %d/%d %s", self.what, self.finished, self.total, self.done)
            self.last = time.monotonic()


def run_jobs(work: Callable[..., object], jobs: list[tuple], processes: int, what: str, done: str) -> None:
    """Run ``work(*job)`` for every job, in this process (``processes <= 1``) or in a pool of
    forked workers; the first error is raised and the jobs not started are cancelled.

    Args:
        work: a module-level function (it crosses to the workers by name).
        jobs: its arguments, one tuple per image.
        processes: parallel workers.
        what, done: the progress line, ``"<what>: 3/10 <done>"``.
    """
    progress = _Progress(len(jobs), what, done)
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            work(*job)
            progress.advance()
        return
    # Fork where there is fork: workers start at once and share this process's pages instead of
    # re-importing the caller's __main__ (the CLI's, with torch) as spawn and forkserver do. Freezing
    # the collector keeps the children's GC off the parent's objects, so those pages stay shared
    # (not copied); each job carries only its own image's rows.
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    gc.freeze()
    try:
        with ProcessPoolExecutor(
            max_workers=processes, mp_context=context, initializer=_die_with_parent
        ) as pool:
            pending = {pool.submit(work, *job) for job in jobs}
            while pending:
                finished, pending = wait(pending, timeout=10, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    progress.advance()
    finally:
        gc.unfreeze()
