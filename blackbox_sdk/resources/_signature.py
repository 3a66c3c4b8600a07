"""openai's own signature on every method the SDK overrides: `inspect.signature`, `help()` and IDEs
show openai's parameters (plus the SDK's per-call options, keyword-only, after them), and a call
with an unknown, positional or missing argument raises the `TypeError` openai's method raises, with
its message, before anything is spent. Statically the override is typed as openai's method.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from openai import NOT_GIVEN
from openai._utils import required_args

from .._options import OPTION_NAMES

F = TypeVar("F", bound=Callable[..., Any])

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
OPTIONS = tuple(inspect.Parameter(name, _KEYWORD, default=NOT_GIVEN, annotation=Any) for name in OPTION_NAMES)


def _names(names: list[str]) -> str:
    """Names quoted and joined as the interpreter lists missing arguments: 'a', 'a' and 'b', 'a', 'b', and 'c'."""
    quoted = [repr(name) for name in names]
    if len(quoted) < 3:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _plural(count: int, word: str) -> str:
    """`1 argument`, `2 arguments`."""
    return f"{count} {word}" + ("" if count == 1 else "s")


class Mirror:
    """openai's method `upstream` as the SDK overrides it: its signature with the SDK's options, and
    the checks Python (and openai's `required_args`, where it has one) make of a call's arguments."""

    def __init__(self, upstream: Callable[..., Any]) -> None:
        openai_signature = inspect.signature(upstream)
        self.signature = openai_signature.replace(parameters=[*openai_signature.parameters.values(), *OPTIONS])
        self._name = upstream.__qualname__
        self._keywords = [p for p in self.signature.parameters.values() if p.kind is _KEYWORD]
        self._names = frozenset(self.signature.parameters)  # `parameters` makes a new mapping proxy at each use
        self._needed = [p.name for p in self._keywords if p.default is p.empty]
        variants = inspect.getclosurevars(upstream).nonlocals.get("variants") if hasattr(upstream, "__wrapped__") else None
        self._required = required_args(*variants)(_named(upstream.__name__)) if variants else None
        self._variants = [frozenset(variant) for variant in variants or ()]

    def check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise openai's TypeError for arguments its method would refuse (every one is keyword-only)."""
        if self._required is not None and (args or not any(variant <= kwargs.keys() for variant in self._variants)):
            self._required(None, *args, **kwargs)  # openai's own decorator, where it may refuse: its checks and messages first
        unknown = [name for name in kwargs if name not in self._names]
        if unknown:
            raise TypeError(f"{self._name}() got an unexpected keyword argument {unknown[0]!r}")
        if args:
            given = sum(1 for p in self._keywords if p.name in kwargs)
            also = f" positional arguments (and {_plural(given, 'keyword-only argument')})" if given else ""
            raise TypeError(f"{self._name}() takes 1 positional argument but {len(args) + 1}{also} were given")
        missing = [name for name in self._needed if name not in kwargs]
        if missing:
            raise TypeError(f"{self._name}() missing {_plural(len(missing), 'required keyword-only argument')}: {_names(missing)}")


def _named(name: str) -> Callable[..., None]:
    """A function called `name` that accepts anything: what openai's `required_args` wraps to check a call."""

    def accept(self: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the checks are the decorator's."""

    accept.__name__ = name
    return accept


@functools.cache
def mirror_of(upstream: Callable[..., Any]) -> Mirror:
    """The Mirror of an openai method, built once."""
    return Mirror(upstream)


def mirror(upstream: F, *, view: bool = False) -> Callable[[Callable[..., Any]], F]:
    """Decorator: `method(self, **kwargs)` as the override of openai's `upstream`, with its name,
    signature (plus the SDK's options), docstring (then the SDK's) and argument errors; a `view`'s
    as openai's raw and streaming-response views check them (with their own `extra_headers` given)."""
    spec = mirror_of(upstream)
    added = {"extra_headers": None} if view else {}

    def decorate(method: Callable[..., Any]) -> F:
        @functools.wraps(upstream)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            spec.check(args, {**added, **kwargs})
            return method(self, **kwargs)

        call.__signature__ = spec.signature  # type: ignore[attr-defined]
        call.__doc__ = "\n\n".join(doc for doc in (upstream.__doc__, method.__doc__) if doc)
        return call  # type: ignore[return-value]

    return decorate


def mirrored(sdk_method: Any, owner: Any, method: Callable[..., Any]) -> Any:
    """`method` bound to `owner`, dressed as `sdk_method` (an override above, bound): what a raw view
    holds in place of openai's wrapper of that method."""
    return mirror(sdk_method.__wrapped__, view=True)(method).__get__(owner)
