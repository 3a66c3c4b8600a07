"""The SDK's one logger, ``blackbox_sdk``, with secrets always filtered and output only on request.

The `SecretFilter` (`_redact.py`) sits on the logger itself, so every record the SDK
emits is redacted whatever handlers the application configures. Nothing is printed unless the
environment variable ``BLACKBOX_LOG`` is ``debug`` or ``info`` when :func:`setup_logging` runs
(the package calls it once on import), mirroring openai-python's ``OPENAI_LOG``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from ._redact import SecretFilter

LOG_ENV = "BLACKBOX_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "[%(asctime)s - %(name)s:%(lineno)d - %(levelname)s] %(message)s"

logger = logging.getLogger("blackbox_sdk")
logger.addFilter(SecretFilter())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only from Python 3.11
    """A handler writing to whatever ``sys.stderr`` is when each record arrives (as logging's last resort does)."""

    def __init__(self) -> None:
        """Skip StreamHandler's stream binding: the stream is looked up per record."""
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr


def setup_logging() -> None:
    """Send SDK logs to stderr at the level named by ``BLACKBOX_LOG``; do nothing when it is unset."""
    level = _LEVELS.get(os.environ.get(LOG_ENV, "").strip().lower())
    if level is None:
        return
    logger.setLevel(level)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
