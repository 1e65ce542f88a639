"""Progress bars: on for people at a terminal or in Jupyter, off inside recorded pipeline runs.

The pipeline runner sets ``CASCADE_PROGRESS=off`` for the chapter kernels, because a progress bar
stored in an executed notebook is noise in the book (the runner shows its own bar per chapter).
"""

from __future__ import annotations

import os

_OFF = ("0", "off", "false", "no")


def progress_disabled(progress: bool = True) -> bool:
    """``disable=`` value for tqdm: hidden when the caller asks, or in a recorded pipeline run."""
    return (not progress) or os.environ.get("CASCADE_PROGRESS", "").lower() in _OFF
