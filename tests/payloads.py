"""Hostile data for tests: a pickle payload that proves, by its side effect, whether it was unpickled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class RunsOnUnpickle:
    """A pickle payload that makes a folder when unpickled: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))
