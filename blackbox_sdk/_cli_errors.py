"""How every ``blackbox-sdk`` command reports a failure: one line on stderr, ``blackbox-sdk: <message>``, and its exit status."""

from __future__ import annotations

import sys

EXIT_ERROR = 1  # the SDK reported an error
EXIT_USAGE = 2  # a usage error (argparse's status too), or a missing extra


def report_error(message: object, status: int = EXIT_ERROR) -> int:
    """Print ``message`` as the command line's one error line on stderr, its lines joined (libpq's errors add a hint on a
    line of their own); return ``status``."""
    print("blackbox-sdk: " + " ".join(line.strip() for line in str(message).splitlines() if line.strip()), file=sys.stderr)
    return status
