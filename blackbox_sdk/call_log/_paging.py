"""Reading a call log a page at a time: calls oldest first by ``(created, call_id)``, so writers are never held up.

Every store reads its calls through :func:`paged` with its own one-page query, so the order,
the cursor and ``limit`` mean the same on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .._exceptions import ConfigError
from ._records import CallRecord, Feedback

PAGE_SIZE = 500

Page = list[tuple[CallRecord, list[Feedback]]]
Cursor = tuple[float, str]  # (created, call_id) of the last call read
PageReader = Callable[[Cursor | None, int], Page]


def paged(read_page: PageReader, limit: int | None) -> Iterator[Page]:
    """Pages of calls with their feedback, each read after the cursor of the last, ``limit`` calls at most in all."""
    after: Cursor | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
        page = read_page(after, size)
        if not page:
            return
        yield page
        after = (page[-1][0].created, page[-1][0].call_id)
        remaining = None if remaining is None else remaining - len(page)


def check_limit(limit: int | None) -> None:
    """ConfigError unless ``limit`` is None or a non-negative integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None; got {limit!r}")
