"""The ``blackbox-sdk`` command: export and summarise the call log, and train a reranker adapter.

    blackbox-sdk log export --log calls.db --out calls.jsonl   # "-" writes to stdout; --force replaces an existing file
    blackbox-sdk stats --log calls.db [--json]
    blackbox-sdk stats --log postgresql://user@host/db        # a fleet's log: any postgresql:// URL
    blackbox-sdk adapter train ...                            # forwarded to blackbox_sdk.adapter (the trainer's CLI)
    blackbox-sdk serve --upstream URL --config proxy.toml     # the OpenAI-compatible proxy (blackbox_sdk.serve's CLI)

Exit status: 0 on success, 1 when the SDK reports an error (printed on stderr), or stdout can't
be written (a full disk, a closed stdout), 2 for a usage error or when the ``[adapter]`` or
``[proxy]`` extra is missing, 141 (a Unix tool killed by SIGPIPE) when the reader of stdout went
away, as in ``blackbox-sdk stats ... | head``. Its own commands write UTF-8, whatever the locale.
The commands that read a log never change it: a file or database without the call log's tables is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ._cli_errors import EXIT_USAGE, report_error
from ._exceptions import BlackBoxError
from .call_log import CallLogStore, open_call_log
from .call_log._export import exists_message, is_stream

__all__ = ["main"]

_ADAPTER_HINT = (
    "blackbox-sdk adapter train needs the adapter extra (torch, transformers, an encoder): "
    "pip install 'blackbox-sdk[adapter]'"
)
_PROXY_HINT = "blackbox-sdk serve needs the proxy extra (starlette, uvicorn): pip install 'blackbox-sdk[proxy]'"
_EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit status."""
    try:
        status = _run(list(sys.argv[1:] if argv is None else argv))
        with _writing_stdout():
            if sys.stdout is not None:
                sys.stdout.flush()  # a reader that went away shows here, not as a warning at the interpreter's exit
        return status
    except BrokenPipeError:  # `... | head` closed stdout: stop quietly, and let the exit's flush write nowhere
        _drop_stdout()
        return _EXIT_BROKEN_PIPE
    except BlackBoxError as exc:  # the last flush failed
        return report_error(exc)


def _run(args: list[str]) -> int:
    """The command line's work: a subcommand, or an extra's own CLI."""
    if args[:2] == ["adapter", "train"]:
        return _delegate(".adapter._cli", _ADAPTER_HINT, args[2:])
    if args[:1] == ["serve"]:
        return _delegate(".serve", _PROXY_HINT, args[1:])
    options = _parser().parse_args(args)
    try:
        _utf8_stdout()
        with _writing_stdout():  # the commands' own errors are BlackBoxErrors: an OSError here is stdout's
            return int(options.run(options))
    except BlackBoxError as exc:
        return report_error(exc)


def _utf8_stdout() -> None:
    """Stdout as UTF-8 (the export's encoding) in any locale, so no answer or model name fails to print; an error for a closed stdout."""
    if sys.stdout is None:
        raise BlackBoxError("stdout is closed: the command has nowhere to write; send it to a file or a pipe")
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8")


@contextlib.contextmanager
def _writing_stdout() -> Iterator[None]:
    """Writes to stdout that fail (a full disk, an I/O error) as a BlackBoxError, the rest of the output dropped; a reader gone passes."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        _drop_stdout()
        raise BlackBoxError(f"can't write to stdout: {exc}") from exc


def _drop_stdout() -> None:
    """Point stdout's file descriptor at the null device, so the interpreter's exit flush writes nowhere instead of failing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="blackbox-sdk", description="Tools for the blackbox-sdk call log and adapters.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    log = commands.add_parser("log", help="work with the call log").add_subparsers(dest="action", required=True, metavar="ACTION")
    export = log.add_parser("export", help="write the call log as JSON lines (the adapter trainer's input)")
    export.add_argument("--log", required=True, help="the call log: an SQLite file or a postgresql:// URL")
    export.add_argument("--out", required=True, help="the JSONL file to write, or - for stdout; an existing file is refused unless --force")
    export.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    export.set_defaults(run=_export)

    stats = commands.add_parser("stats", help="spend by model and day, cache hit rate, calls, errors")
    stats.add_argument("--log", required=True, help="the call log: an SQLite file or a postgresql:// URL")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    stats.set_defaults(run=_stats)

    adapter = commands.add_parser("adapter", help="train a BBox-Adapter reranker (needs the [adapter] extra)")
    adapter.add_argument("action", choices=["train"], help="'train ...': run 'blackbox-sdk adapter train --help' for its options")

    commands.add_parser("serve", help="run the OpenAI-compatible proxy (needs the [proxy] extra): 'blackbox-sdk serve --help'")
    try:
        from .serve._keys_cli import add_keys_command  # the face imports starlette: the [proxy] extra
    except ImportError:
        pass
    else:
        add_keys_command(commands)
    return parser


def _open_log(target: str) -> contextlib.closing[CallLogStore]:
    """The existing call log at a PostgreSQL URL or a path, opened without creating a file or a table."""
    return contextlib.closing(open_call_log(target, create=False))


def _export(options: argparse.Namespace) -> int:
    """``log export``: write every call as one JSON line; a usage error, before the log is opened, for a file it would
    replace without --force (and the same refusal for a file made while it ran); a device or a pipe is written into."""
    out = options.out
    if out != "-" and not options.force and os.path.lexists(out) and not os.path.isdir(out) and not is_stream(out):
        return report_error(exists_message(out), EXIT_USAGE)
    with _open_log(options.log) as log:  # a str: "sub/" keeps the separator that names a folder; a file made meanwhile stays
        count = log.export_jsonl(sys.stdout if out == "-" else out, replace=options.force)
    print(f"exported {count} calls to {options.out}", file=sys.stderr)
    return 0


def _stats(options: argparse.Namespace) -> int:
    """``stats``: the log's numbers as tables, or as JSON with ``--json``."""
    with _open_log(options.log) as log:
        numbers = log.stats()
    print(json.dumps(numbers, indent=2) if options.json else _format_stats(numbers))
    return 0


def _format_stats(numbers: dict[str, Any]) -> str:
    """The stats as readable text: a summary line, then spend by model and by UTC day and model."""
    summary = (
        f"calls {numbers['calls']}   errors {numbers['errors']}   "
        f"cache hits {numbers['cache_hits']} ({numbers['cache_hit_rate']:.1%})   "
        f"spend ${numbers['cost_usd']:.6f}   feedback {numbers['feedback']}"
    )
    columns = ("calls", "errors", "cache_hits", "cost_usd")
    by_model = [[_cell(model), *(_cell(row[c]) for c in columns)] for model, row in numbers["by_model"].items()]
    by_day = [[row["day"], _cell(row["model"]), *(_cell(row[c]) for c in columns)] for row in numbers["by_day_model"]]
    return "\n\n".join([
        summary,
        "By model\n" + _table(["model", "calls", "errors", "cache hits", "spend $"], by_model, left=1),
        "By day (UTC) and model\n" + _table(["day", "model", "calls", "errors", "cache hits", "spend $"], by_day, left=2),
    ])


def _cell(value: Any) -> str:
    """A table cell: spend to six decimals (a cheap call costs millionths), counts as integers, and text (a model name a
    proxy's client chose) with its control characters escaped (``\\x1b``, ``\\n``), so none drives the terminal or breaks a row."""
    if isinstance(value, float):
        return f"{value:.6f}"
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(value))


def _table(header: list[str], rows: list[list[str]], *, left: int) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the numbers right-aligned."""
    if not rows:
        return "  (no calls)"
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        """One row, padded to the column widths."""
        return "  " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _delegate(module: str, hint: str, argv: list[str]) -> int:
    """Hand the rest of the command line to an extra's own CLI (`module`'s `cli_main`), or say which extra is missing."""
    try:
        cli_main = importlib.import_module(module, __package__).cli_main
    except ImportError as exc:
        return report_error(f"{hint} (import failed: {exc})", EXIT_USAGE)
    return int(cli_main(argv))
