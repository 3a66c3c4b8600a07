"""The ``with`` support the SDK's stores share: leaving the block closes the store."""

from __future__ import annotations

from typing import TypeVar

_C = TypeVar("_C", bound="Closing")


class Closing:
    """A base class for objects with ``close()``, usable as a context manager that calls it on exit."""

    def __enter__(self: _C) -> _C:
        """The object itself, closed when the ``with`` block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the object, whatever ended the block."""
        self.close()

    def close(self) -> None:
        """Release what the object holds; subclasses implement it."""
        raise NotImplementedError
