"""The JSONL export: one line per call with its candidates and feedback, the format the adapter trainer reads.

Documented field by field in ``docs/call-log.md``. Any call-log store can write it from its
(record, feedback) pairs; a file is written beside the target under a name of its own (so two
exports to one path never mix) and renamed, so it is whole or absent (a failed export removes what
it wrote), and never over the SQLite log it exports or a folder (a path ending in a separator names one).
A device or a pipe (``/dev/stdout``, ``/dev/null``, a shell's ``>(gzip > calls.jsonl.gz)``) is written into as a stream,
never replaced by a file. An existing file is refused unless ``replace`` is given (the command line's ``--force``); without it the last step
is a hard link, which fails rather than replace a file made meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .._exceptions import CallLogError, ConfigError
from .._text import checked_path
from ._records import CallRecord, Feedback

EXPORT_FORMAT = "blackbox-calllog/1"
_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep, "/") if sep)


def export_jsonl(
    calls: Iterable[tuple[CallRecord, list[Feedback]]], out: str | Path | TextIO, *, log: Path | None = None, replace: bool = False
) -> int:
    """Write one JSON line per call to a path or a text stream; the count; before a call is read, ConfigError for a path
    that is ``log``'s own file or, unless ``replace``, an existing file (also one made while the export ran), CallLogError
    for a folder. Replacing is asked for, never the default, as the command line's ``--force`` is."""
    if not isinstance(out, (str, Path)):
        return _write_lines(calls, out)
    target = checked_path(out, "the export")  # a blank one (Path("") is the working folder) or one holding NUL: ConfigError
    if target.is_dir():
        raise CallLogError(f"can't write the export {out}: it is a folder; name a file to write")
    if isinstance(out, str) and out.endswith(_SEPARATORS):  # Path("sub/") is "sub": the separator that names a folder is gone
        raise CallLogError(f"can't write the export {out}: ending in {out[-1]!r}, it names a folder; name a file to write")
    if is_stream(target):
        return _write_stream(calls, target)
    if target.exists() and not target.is_file():
        raise CallLogError(f"can't write the export {out}: it is neither a file, a device nor a pipe; name a file to write")
    if not replace and os.path.lexists(target):
        raise ConfigError(exists_message(out))
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.partial")
    if log is not None:
        _refuse_overwriting(log, target, partial)
    try:
        with partial.open("x", encoding="utf-8") as sink:
            count = _write_lines(calls, sink)
        _publish(partial, target, replace)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError) and not replace:
            raise ConfigError(exists_message(out)) from None
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    return count


def _write_error(target: Path, exc: OSError) -> CallLogError:
    """A failed write in words about the file asked for, never the temporary file beside it that the OS error names."""
    if exc.errno == errno.ENOENT and not target.parent.is_dir():
        return CallLogError(f"can't write the export {target}: its folder {target.parent} does not exist")
    return CallLogError(f"can't write the export {target}: {exc.strerror or exc}")


def is_stream(path: str | Path) -> bool:
    """Whether ``path`` is a character device or a pipe (``/dev/stdout``, ``/dev/fd/63``): written into, never replaced,
    where a rename over it would put a file in place of the device, as root even ``/dev/null``."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _write_stream(calls: Iterable[tuple[CallRecord, list[Feedback]]], target: Path) -> int:
    """Write the export lines into a device or a pipe as it is; CallLogError when it can't be written, and a reader that
    went away as the BrokenPipeError a stream's export raises (``... --out /dev/stdout | head`` ends quietly)."""
    try:
        with target.open("w", encoding="utf-8") as sink:
            return _write_lines(calls, sink)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CallLogError(f"can't write the export {target}: {exc}") from exc


def exists_message(out: str | Path) -> str:
    """The refusal of an export over an existing file, the command line's and the library's alike."""
    return f"the export file {out} exists; pass --force (replace=True) to replace it, or name another file"


def _publish(partial: Path, target: Path, replace: bool) -> None:
    """Give the written export its name: a rename over any file there with ``replace``, else a hard link (FileExistsError
    for a file there); where the file system has no hard links, a copy into a file made only if absent."""
    if replace:
        partial.replace(target)
        return
    try:
        os.link(partial, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        with partial.open("rb") as source, target.open("xb") as sink:  # no hard links: "x" still never replaces a file
            try:
                shutil.copyfileobj(source, sink)
            except BaseException:
                target.unlink(missing_ok=True)  # the file this made, half written
                raise
    partial.unlink()


def _refuse_overwriting(log: Path, *written: Path) -> None:
    """ConfigError when a file the export writes is the log's own file, its WAL or its shared memory (by path or by inode)."""
    for own in (log, log.with_name(log.name + "-wal"), log.with_name(log.name + "-shm")):
        for path in written:
            if path.resolve() == own.resolve() or (path.exists() and own.exists() and os.path.samefile(path, own)):
                raise ConfigError(f"can't export the call log {log} to {path}: that is the log's own file; write the export elsewhere")


def _write_lines(calls: Iterable[tuple[CallRecord, list[Feedback]]], sink: TextIO) -> int:
    """Write the export lines to an open text stream."""
    count = 0
    for record, feedback in calls:
        line = {
            "format": EXPORT_FORMAT,
            **record.model_dump(mode="json"),
            "feedback": [item.model_dump(mode="json", exclude={"call_id"}) for item in feedback],
        }
        sink.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
        count += 1
    return count
