"""What this operating system lacks, in one place: file locks, and the one line saying so.

The code takes advisory file locks in three places (a run's workdir, a dataset being
prepared, a sweep's reports), written against POSIX `fcntl.flock`. Those modules import
`fcntl` from here:

    from research.platform import fcntl

which is the standard `fcntl` module on Linux and macOS. Where there is none (Windows),
it is `WindowsLocks`: the same `flock(file, LOCK_EX | LOCK_NB)` / `flock(file, LOCK_UN)`
calls on `msvcrt.locking` of the file's first byte, so a second process is still refused
(`BlockingIOError`) or made to wait. With neither (an unknown platform), `NoLocks` takes no
lock and warns once that runs sharing a folder are not kept apart, instead of a traceback at
import.

What runs where is stated in the docs (page "install"): x86-64 Linux runs everything;
Linux ARM and macOS run everything but the "onednn" conv algorithm (they use "tiled");
native Windows is not supported (array-record, which the data pipeline reads, has no
Windows wheel): use WSL2.
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings

LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8  # POSIX flock's values


class WindowsLocks:
    """`fcntl.flock` on `msvcrt.locking`: an exclusive lock on byte 0 of the file."""

    LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN

    def __init__(self, msvcrt: types.ModuleType):
        self._msvcrt = msvcrt

    def flock(self, file, operation: int) -> None:
        fd = file if isinstance(file, int) else file.fileno()
        here = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks from the current position
        try:
            if operation & LOCK_UN:
                self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)
            elif operation & LOCK_NB:
                try:
                    self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)
                except OSError as err:
                    raise BlockingIOError(*err.args) from None
            else:
                while True:  # LK_LOCK gives up after 10 tries of 1 s; a lock waits for good
                    try:
                        self._msvcrt.locking(fd, self._msvcrt.LK_LOCK, 1)
                        break
                    except OSError:
                        continue
        finally:
            os.lseek(fd, here, os.SEEK_SET)


class NoLocks:
    """No file locks at all: each `flock` succeeds; the first warns once."""

    LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN

    def __init__(self):
        self.warned = False

    def flock(self, file, operation: int) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(
                "this platform has no file locks (neither fcntl nor msvcrt): processes "
                "sharing a workdir, data folder or sweep are not kept apart",
                RuntimeWarning,
                stacklevel=2,
            )


def file_locks(fcntl_module=None, msvcrt_module=None):
    """The `fcntl`-like object for the modules given (None: import this platform's)."""
    if fcntl_module is None and msvcrt_module is None:
        try:
            import fcntl as fcntl_module  # POSIX only: absent on Windows
        except ImportError:
            with contextlib.suppress(ImportError):
                import msvcrt as msvcrt_module  # Windows only
    if fcntl_module is not None:
        return fcntl_module
    if msvcrt_module is not None:
        return WindowsLocks(msvcrt_module)
    return NoLocks()


fcntl = file_locks()
