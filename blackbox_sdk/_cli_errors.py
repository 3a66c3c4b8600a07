"""How every ``blackbox-sdk`` command reports a failure: one line on stderr, ``blackbox-sdk: <message>``, and its exit status."""

from __future__ import annotations

import sys

EXIT_ERROR = 1  # the SDK reported an error
EXIT_USAGE = 2  # a usage error (argparse's status too), or a missing extra


def report_error(message: object, status: int = EXIT_ERROR) -> int:
    """Print ``message`` as the command line's one error line on stderr; return ``status``."""
    print(f"blackbox-sdk: {message}", file=sys.stderr)
    return status
