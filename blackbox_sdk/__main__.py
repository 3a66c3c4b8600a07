"""``python -m blackbox_sdk``: the same command line as ``blackbox-sdk``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
