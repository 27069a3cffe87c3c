"""Ctrl-C that cannot be lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread is at
that moment. When that moment falls inside code that cannot pass an exception on (a
``__del__`` method, a weakref or garbage-collector callback: Python prints "Exception
ignored in ..." and goes on) or inside a library that swallows it, the search would carry
on as if nothing had been pressed. :func:`watch_interrupts` also notes the signal, and
:func:`check_interrupt`, called between training steps and between trials, raises the
interrupt again when it was noted but never arrived, so a Ctrl-C always stops the search
within one training step. SIGTERM is handled the same way, as :class:`Terminated` (a
``KeyboardInterrupt``), so a ``kill`` or a service manager's stop records the running
trial as interrupted instead of killing the process mid-write.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

_noted: int | None = None  # the signal noted and not yet raised where it could stop the search


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, ``kill``, a batch system's time limit): the search stops
    as for Ctrl-C, the running trial recorded as interrupted, and the command exits 143."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


# modules whose import runs Python from C++ (pybind11): an exception raised there cannot pass
# back through the C++ frames, and the process aborts ("terminate called after throwing an
# instance of 'pybind11::error_already_set'", exit -6, seen when a Ctrl-C landed in
# torch.distributed's _c10d_init during start-up) instead of stopping
_UNINTERRUPTIBLE_IMPORTS = ("torch", "torchvision")
_RETRY_SECONDS = 0.05


def _importing_uninterruptible() -> bool:
    """True while one of :data:`_UNINTERRUPTIBLE_IMPORTS` is being imported (its module is
    in ``sys.modules`` with its spec still initializing: CPython's importlib marks it so)."""
    for name in _UNINTERRUPTIBLE_IMPORTS:
        spec = getattr(sys.modules.get(name), "__spec__", None)
        if getattr(spec, "_initializing", False):
            return True
    return False


def _held() -> bool:
    """True when the noted interrupt must wait for an import to end. It is then held: a timer
    looks again in 50 ms and raises it once the import is over, as if the key had been pressed
    at that moment (no timer on Windows: check_interrupt() raises it later)."""
    if not _importing_uninterruptible():
        return False
    _look_again_soon()
    return True


def _look_again_soon() -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)


def _note_and_raise(signum, frame) -> None:
    global _noted
    _noted = signum
    if not _held():
        raise interrupt_for(signum)


def _in_import_machinery(frame) -> bool:
    """True when ``frame`` or a caller of it is importlib's own code: the end of an import
    releases its module lock in a weakref callback, where a raised exception is printed
    ("Exception ignored in ...") and lost."""
    # walk_stack(None) would walk this function's own callers, not "no frame": a signal handler may be given None
    return frame is not None and any(f.f_code.co_filename.startswith("<frozen importlib")
                                     for f, _ in traceback.walk_stack(frame))


def _raise_held(signum, frame) -> None:
    """SIGALRM while an interrupt is held: raise it once the import that held it is over,
    and out of importlib's clean-up (else the timer looks again in 50 ms)."""
    if _noted is None or _held():
        return
    if _in_import_machinery(frame):
        _look_again_soon()
        return
    raise interrupt_for(_noted)


@contextmanager
def watch_interrupts() -> Iterator[None]:
    """Note every SIGINT received while the block runs (and raise it, as Python does).

    Only the main thread can install a handler, and a process that ignores SIGINT (started
    with ``nohup`` or as a background job of a script) keeps ignoring it: in both cases
    nothing changes.
    """
    global _noted
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        # nested in a watch already installed (cli.main's), or SIGINT ignored: what the outer
        # watch noted stays noted, so check_interrupt() still sees a swallowed Ctrl-C
        yield
        return
    _noted = None
    previous = signal.signal(signal.SIGINT, _note_and_raise)
    timer = hasattr(signal, "SIGALRM")
    previous_alarm = signal.signal(signal.SIGALRM, _raise_held) if timer else None
    # SIGTERM too, unless someone set it up already (its default kills the process mid-write)
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _note_and_raise)
    try:
        yield
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGINT, previous)
        if previous_term == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _noted = None  # nothing noted here outlives the block


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` when a SIGINT was noted and then swallowed before it
    could stop the search (once: the raised interrupt clears the note)."""
    global _noted
    if _noted is not None:
        signum, _noted = _noted, None
        raise interrupt_for(signum)


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) behind ``exc``, or None.

    A library that cleans up when an interrupt lands inside it can fail in its clean-up and
    raise that failure instead: Optuna's journal file lock, interrupted mid-rename, raised
    ``FileNotFoundError`` for its lock file, and the running trial was recorded as failed
    by that error instead of as interrupted. Python keeps the interrupt as the new
    exception's ``__context__``; a noted interrupt (:func:`watch_interrupts`) counts too.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return interrupt_for(_noted) if _noted is not None else None
