"""Ctrl-C and SIGTERM: finish the current optimizer step, write a checkpoint, stop.

SIGTERM is what cluster schedulers send before preemption, so it is treated like Ctrl-C. A second
signal stops at once (inside the step; resuming then starts from the last checkpoint).
"""

from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: records the first SIGINT/SIGTERM in ``signum`` (0 until one arrives).

    Handlers are installed only on the main thread (Python allows no other) and restored on exit.
    """

    def __init__(self):
        self.signum, self._old = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nfinetune: {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
              "(send it again to abort)", flush=True)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def stop_exception(signum: int) -> BaseException:
    """What a stop at a step boundary raises: KeyboardInterrupt for Ctrl-C (as Python does),
    ``SystemExit(128 + 15)`` for SIGTERM (the shell's code for a terminated process; no traceback)."""
    if signum == signal.SIGTERM:
        return SystemExit(128 + signum)
    return KeyboardInterrupt()
