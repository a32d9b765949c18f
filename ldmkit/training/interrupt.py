"""Ctrl-C during training: finish the step in flight, save it, then stop; and one run per output folder.

A SIGINT that arrives in the middle of an optimizer step must not leave half-updated weights behind, so
the first one only raises a flag that the loop reads between steps. A second SIGINT interrupts at once
(the default handler is back), for a step that hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ldmkit.errors import TrainingError

log = logging.getLogger(__name__)

LOCK_FILE = ".ldmkit-train.lock"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving; ``step`` is the step the saved checkpoint holds."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training stopped at step {step}; {checkpoint} holds step {step}; run again to resume")
        self.step = step
        self.checkpoint = checkpoint


class InterruptFlag:
    """Set by the first SIGINT while :meth:`deferred` is active; read by the loop between steps."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[InterruptFlag]:
        """Defer the first SIGINT to the next step boundary (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def first(signum: int, frame: object) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
            log.warning("interrupt: finishing the current step and saving; press Ctrl-C again to stop at once")

        signal.signal(signal.SIGINT, first)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def exclusive_out_dir(out_dir: Path) -> Iterator[None]:
    """Hold a lock on ``out_dir`` for the run; a second run writing to the same folder is refused.

    The lock is an advisory ``flock`` on a file in the folder: the operating system releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock behind.
    """
    import fcntl

    path = Path(out_dir) / LOCK_FILE
    handle: IO[str] = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise TrainingError(
                f"out_dir {out_dir} is in use by another ldmkit train run ({owner}); "
                "wait for it to finish or choose another out_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
