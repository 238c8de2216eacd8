"""Progress bars that suit where they are written: live on a terminal, and in a log file or
CI (stderr not a terminal) a plain line at most every LOG_INTERVAL seconds, so a run's log
stays readable instead of holding a carriage-return update per step."""

from __future__ import annotations

import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm

LOG_INTERVAL = 15.0  # seconds between progress lines off a terminal


class _Lines:
    """A stream for tqdm that writes each refresh as its own line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(plain_tqdm):
    """A bar whose postfix waits for the next timed refresh instead of forcing one per step."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(*args, **kwargs) -> tqdm:
    """tqdm(*args, **kwargs), throttled to lines when stderr is not a terminal."""
    if sys.stderr.isatty():
        return tqdm(*args, **kwargs)
    kwargs.update(file=_Lines(sys.stderr), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ncols=100)
    return _LogBar(*args, **kwargs)
