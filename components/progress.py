"""The one progress bar every loop in components/ and flows/ uses.

On a terminal it is tqdm's live bar. Written to a log file (stderr is not a TTY: `dvc repro`
piped, `mgpo pipeline`, a scheduled run), tqdm would write one line per update, thousands for
a prepare or SFT run; there the bar prints at most once every `LOG_INTERVAL_S` seconds (and at
its end), with a fixed width.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 5.0
"""Seconds between two lines of a bar written to a file or pipe."""


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, live on a terminal and throttled in a log file."""
    if is_terminal(kwargs.get("file")):
        kwargs.setdefault("dynamic_ncols", True)
    else:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)
