"""Progress that suits where the output goes: tqdm's animated bars on a terminal, plain lines in a log.

A bar redraws itself with carriage returns many times a second; sent to a file, that is one endless line of
thousands of states. :class:`LogLines` wraps the error stream when it is not a terminal (the command line installs
it, :func:`log_friendly_stderr`): each bar becomes a line at most every ``$LANDMARK_PROGRESS_SECONDS`` (default
30) and one when it reaches 100%, while everything else passes through unchanged. Every bar of every command goes
through it, without a change to the code that draws them.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import Iterator, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor up for nested bars
PROGRESS_SECONDS_ENV = "LANDMARK_PROGRESS_SECONDS"


class LogLines:
    """A text stream that turns carriage-return redraws of bars into lines: each bar's latest state every ``every``
    seconds, and a bar's line as soon as it reaches 100%; a cleared bar leaves nothing more. Plain text passes
    through unchanged."""

    def __init__(self, raw: TextIO, every: float = 30.0):
        self._raw = raw
        self.every = float(every)
        self._pending: dict[str, str] = {}  # bar (its description) -> its latest state, not yet written
        self._last = time.monotonic()
        self._clean = True  # the output is at the start of a line
        self._finished: str | None = None  # the bar whose 100% line was the last one written

    def _put(self, text: str) -> None:
        self._raw.write(text)
        self._clean = text.endswith("\n")

    def _line(self, text: str) -> None:
        self._put(("" if self._clean else "\n") + text + "\n")

    def write(self, text: str) -> int:
        first, *redraws = _ANSI.sub("", text).split("\r")
        # a bar's own line breaks (nested bars, a bar closing) come as bare newlines at the start of a line
        if first and not (self._clean and not first.strip("\n")):
            self._put(first)
        for piece in redraws:
            state, _, rest = piece.partition("\n")
            state = state.strip()
            if state:
                bar = state.split(":", 1)[0]
                if "100%|" in state:
                    self._pending.pop(bar, None)
                    if self._finished != bar:  # a bar may draw its final state twice
                        self._line(state)
                    self._finished = bar
                else:
                    self._pending[bar] = state
                    self._finished = None if self._finished == bar else self._finished
            if self._pending and time.monotonic() - self._last >= self.every:
                for line in self._pending.values():
                    self._line(line)
                self._pending.clear()
                self._last = time.monotonic()
            if rest.strip("\n"):
                self._put(rest)
        return len(text)

    def flush(self) -> None:
        self._raw.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # encoding, fileno, ... of the wrapped stream
        return getattr(self._raw, name)


@contextlib.contextmanager
def log_friendly_stderr() -> Iterator[None]:
    """``sys.stderr`` as :class:`LogLines` while the block runs, when it is not a terminal (else unchanged)."""
    raw = sys.stderr
    try:
        tty = raw.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty or isinstance(raw, LogLines):
        yield
        return
    try:
        every = float(os.environ.get(PROGRESS_SECONDS_ENV, "30"))
    except ValueError:
        every = 30.0
    sys.stderr = LogLines(raw, every)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = raw
