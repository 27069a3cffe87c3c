"""The decoded-image cache: every image decoded once per resolution, kept as uint8.

A cache lives in ``RUN_DIR/cache/<size>px_<chans>ch/`` as ``images.npy`` (a NumPy
array ``(N, H, W, C)`` opened as a memory map) and ``manifest.json``. The manifest
is written last and lists every source with its size and modification time; a cache
whose manifest is missing (a killed build) or whose sources changed is rebuilt. A file
lock keeps two workers from building the same cache at once.

Every file is written through a memory map whose disk blocks are reserved first
(:func:`_open_reserved`): a map over a sparse file kills the process with SIGBUS when the
disk fills, while a reservation fails with ``OSError`` (ENOSPC) before a byte is written,
which the command line reports in one line. Files are written as ``*.tmp`` and renamed; a
``*.tmp`` found by whoever takes the lock is a dead writer's and is removed.

A split too large for memory (see :func:`memory_limit`) is gathered once into its own
contiguous file next to the cache (``subset-<digest>.npy``) and memory-mapped, so a trial
reads its batches through the page cache instead of holding the split in its own memory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from automl_vision.data.images import ImageDecodeError, decode
from automl_vision.rundir import DamagedRunFileError, read_json, write_json
from automl_vision.types import Sample, UsageError

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
IMAGES = "images.npy"
MEMORY_ENV = "AUTOML_VISION_DATA_MEMORY_MIB"
_SUBSET_CHUNK_BYTES = 32 * 2**20  # copied at a time into a subset file (bounds the copy's own memory)


def source_fingerprint(samples: Sequence[Sample]) -> str:
    """A hash of every source's identity, size and modification time."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.key.encode("utf-8", "surrogateescape"))
        if s.path is not None:
            try:
                st = os.stat(s.path)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
        elif s.array is not None:
            h.update(hashlib.sha1(np.ascontiguousarray(s.array).tobytes()).digest())
    return h.hexdigest()


def read_cached(directory: str | os.PathLike, count: int | None = None) -> np.ndarray | None:
    """The finished cache in ``directory`` as a read-only memory map, for readers that never
    build one (the dashboard, export's verification); ``None`` when there is none, one is
    still being built (its manifest is written last), or it does not hold ``count`` images."""
    directory = Path(directory)
    try:
        manifest = read_json(directory / MANIFEST)
        if not isinstance(manifest, dict) or (count is not None and manifest.get("count") != count):
            return None
        return np.load(directory / IMAGES, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, DamagedRunFileError):  # a damaged manifest or array: decode again instead
        return None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the cache folder's lock; ``*.tmp`` files there now belong to a writer that died."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for stale in directory.glob("*.tmp"):  # every writer holds the lock, so none is alive
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _reserve(fd: int, offset: int, length: int) -> None:
    """Give the bytes ``offset .. offset + length`` of a file real disk blocks, or raise OSError."""
    try:
        os.posix_fallocate(fd, offset, length)
        return
    except AttributeError:  # no posix_fallocate on this platform (macOS)
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    zeros = bytes(1 << 20)
    for start in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[: min(len(zeros), offset + length - start)], start)


def _open_reserved(path: Path, shape: tuple[int, ...], dtype=np.uint8) -> np.memmap:
    """A new ``.npy`` file at ``path``, memory-mapped for writing, its space reserved on disk.

    Without the reservation the file is sparse and the first write to a page the full disk
    cannot back kills the process with SIGBUS (no message, no clean-up). Raises OSError
    (ENOSPC, EDQUOT, EFBIG) naming ``path``, with nothing left behind.
    """
    arr = None
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        with open(path, "r+b") as fh:
            _reserve(fh.fileno(), arr.offset, arr.nbytes)
    except OSError as exc:
        arr = None  # unmaps the file before it is removed
        path.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    return arr


def _decode_one(sample: Sample, size: int, chans: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode(sample.path if sample.path is not None else sample.array, size, chans), None
    except ImageDecodeError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "out of memory while decoding"


def load_or_build(
    samples: Sequence[Sample],
    directory: Path,
    image_size: int,
    in_chans: int,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Return the cached images ``(N, size, size, chans)`` and ``{index: reason}`` of failures.

    Images that fail to decode are left black in the array and reported; callers drop them.
    """
    directory = Path(directory)
    fingerprint = source_fingerprint(samples)
    with _locked(directory):
        manifest = read_json(directory / MANIFEST)
        data_path = directory / IMAGES
        if (
            manifest
            and manifest.get("format") == CACHE_FORMAT
            and manifest.get("fingerprint") == fingerprint
            and data_path.exists()
        ):
            try:
                arr = np.load(data_path, mmap_mode="r")
            except (ValueError, OSError):  # damaged on disk since: decode again below
                arr = None
            if arr is not None and arr.shape == (len(samples), image_size, image_size, in_chans):
                return arr, {int(k): v for k, v in manifest.get("failures", {}).items()}
        # (re)build: the manifest goes first so a killed build is never trusted
        (directory / MANIFEST).unlink(missing_ok=True)
        for stale in directory.glob("subset-*.npy"):  # gathered from the old images
            stale.unlink(missing_ok=True)
        tmp = directory / (IMAGES + ".tmp")
        arr = _open_reserved(tmp, (len(samples), image_size, image_size, in_chans))
        failures: dict[int, str] = {}
        threads = threads or max(1, min(8, os.cpu_count() or 1))
        done = 0
        pool = ThreadPoolExecutor(max_workers=threads)
        ctrl_c = _DeferredInterrupt().install()
        try:
            for i, (img, err) in enumerate(pool.map(lambda s: _decode_one(s, image_size, in_chans), samples)):
                ctrl_c.check()
                if err is not None:
                    failures[i] = err
                else:
                    arr[i] = img
                done += 1
                if progress is not None and (done % 64 == 0 or done == len(samples)):
                    progress(done, len(samples))
            ctrl_c.check()  # a Ctrl-C after the last image is not lost
        finally:
            # on Ctrl-C, drop the queued decodes instead of finishing them all first
            ctrl_c.restore()
            pool.shutdown(wait=True, cancel_futures=True)
        arr.flush()
        del arr
        os.replace(tmp, data_path)
        write_json(
            directory / MANIFEST,
            {
                "format": CACHE_FORMAT,
                "fingerprint": fingerprint,
                "image_size": image_size,
                "in_chans": in_chans,
                "count": len(samples),
                "failures": {str(k): v for k, v in failures.items()},
            },
        )
        return np.load(data_path, mmap_mode="r"), failures


class _DeferredInterrupt:
    """Ctrl-C while the decoding threads run is noted and raised between two images.

    A KeyboardInterrupt raised inside ``pool.map``'s wait can land while a future's lock is
    held; the decoding threads then wait for that lock forever and so does the shutdown
    that joins them (seen once in CI: the process hung instead of exiting 130). Raised
    here, between two results, it leaves no lock behind. Only in the main thread, where
    Python runs signal handlers.
    """

    def __init__(self) -> None:
        self.noted = False
        self.installed = False
        self.previous = None

    def install(self) -> "_DeferredInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._note)
            self.installed = True
        return self

    def _note(self, signum, frame) -> None:
        self.noted = True

    def check(self) -> None:
        if self.noted:
            self.restore()
            raise KeyboardInterrupt

    def restore(self) -> None:
        import signal

        if self.installed:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
            self.installed = False


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> tuple[int | None, str]:
    """How many bytes of images a process may hold in its own memory, and where that came from.

    ``AUTOML_VISION_DATA_MEMORY_MIB`` sets it; otherwise half of the memory available now
    (the model, its activations and the other split need the rest). ``None``: no limit known.
    """
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            mib = float(raw)
        except ValueError:
            raise UsageError(f"{MEMORY_ENV}={raw!r}: expected a number of MiB (e.g. 4096), or unset it") from None
        return max(0, int(mib * 2**20)), f"{MEMORY_ENV}={raw}"
    avail = _available_memory()
    if avail is None:
        return None, "available memory unknown"
    return avail // 2, f"half the available memory ({avail / 2**30:.1f} GiB)"


def gather(arr: np.ndarray, idx: np.ndarray, directory: Path, limit: int | None) -> np.ndarray:
    """``arr[idx]``: a copy in memory when it takes at most ``limit`` bytes, else memory-mapped.

    The memory-mapped copy is a contiguous file in ``directory`` named after the indices,
    written once (under the cache's lock, through a temporary file) and reused by every
    trial and worker; it is opened copy-on-write, so writing to it never reaches the file.
    """
    idx = np.asarray(idx, dtype=np.int64)
    nbytes = len(idx) * int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.itemsize
    if limit is None or nbytes <= limit:
        return np.asarray(arr[idx])
    directory = Path(directory)
    path = directory / f"subset-{hashlib.sha1(idx.tobytes()).hexdigest()[:16]}.npy"
    with _locked(directory):
        if not path.exists():
            tmp = path.with_suffix(".npy.tmp")
            out = _open_reserved(tmp, (len(idx), *arr.shape[1:]), arr.dtype)
            step = max(1, _SUBSET_CHUNK_BYTES // max(1, nbytes // max(1, len(idx))))
            for start in range(0, len(idx), step):
                out[start : start + step] = arr[idx[start : start + step]]
            out.flush()
            del out
            os.replace(tmp, path)
    return np.load(path, mmap_mode="c")
