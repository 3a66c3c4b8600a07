"""The call log's feedback as training data: its records, and ranking groups from their judgements.

References, `correct` labels, positive rewards and preferred candidates are positives; `incorrect`
labels, non-preferred candidates and negative rewards are negatives.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError, BlackBoxError
from ._groups import RankingGroup, build_groups

LOG_FORMAT = "blackbox-calllog/1"
SQLITE_MAGIC = b"SQLite format 3\x00"
UTF8_CHUNK = 1 << 20  # bytes of a JSONL export checked at a time


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The call log's records as export dicts: from its JSONL export, the SQLite file itself, or a postgresql:// URL."""
    return read_records(path, lambda record: record)


def read_records(path: str | Path, keep: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """``keep`` of each record of the log, checked, read a line at a time: the export is never held whole as text, and
    a caller that keeps less of each record (``training_record``) holds only that; lines end at newlines only, so
    a text holding U+2028 or a form feed (which ``splitlines`` splits at) is read whole."""
    url = isinstance(path, str) and "://" in path
    records = _Lines(shown_log(path), keep)
    if url:  # a database URL (another kind than postgresql:// is refused when opened)
        _export_store(path, records)
        return records.done()
    source = Path(path)
    if source.is_dir() or _is_sqlite(source):  # a folder: the SQLite log's own refusal says what to name instead
        _export_store(source, records)
        return records.done()
    _check_utf8(source)
    with source.open("rb") as handle:
        for line in handle:  # split at b"\n" alone
            records.write(line.decode("utf-8"))
    return records.done()


def _is_sqlite(source: Path) -> bool:
    """Whether the file at ``source`` is an SQLite database (else it is read as the JSONL export); AdapterError for no file.
    A 0-byte file is what SQLite makes for a new database: the SQLite log's reader refuses it, as ``stats`` does."""
    if not source.is_file():
        raise AdapterError(f"no call log at {source}")
    with source.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    return head == SQLITE_MAGIC or not head


def _check_utf8(source: Path) -> None:
    """AdapterError naming the first byte that is not UTF-8 (a binary file), before any line is read as a record."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with source.open("rb") as handle:
        while True:
            chunk = handle.read(UTF8_CHUNK)
            held = len(decoder.getstate()[0])  # bytes of a character the chunk before cut, decoded with this one
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - held + exc.start
                raise AdapterError(f"{source} is neither a call log nor its JSONL export (not UTF-8 text at byte {at})") from None
            if not chunk:
                return
            offset += len(chunk)


class _Lines(io.TextIOBase):
    """A text sink that parses each JSON line as it is written (an export streams into it) and keeps ``keep`` of each record."""

    def __init__(self, name: str, keep: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []
        self._name, self._keep, self._partial, self._number = name, keep, "", 0

    def write(self, text: str) -> int:
        """Take written text, parsing each line it completes."""
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._number += 1
            if line.strip():
                self.records.append(self._keep(_parsed(line, f"{self._name}:{self._number}")))
        return len(text)

    def done(self) -> list[dict[str, Any]]:
        """The records, the last line parsed though no newline ended it."""
        if self._partial:
            self.write("\n")
        return self.records


def _parsed(line: str, where: str) -> dict[str, Any]:
    """One export line as its record; AdapterError naming the line for what is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(record, dict) or record.get("format") != LOG_FORMAT:
        raise AdapterError(f"{where}: not a {LOG_FORMAT} record")
    _check_shape(record, where)
    return record


def _check_shape(record: dict[str, Any], where: str) -> None:
    """AdapterError unless the record's request, candidates and feedback are of the types the export writes (a hand-edited
    export may hold others, which training would stumble on with a TypeError)."""
    for key, kind, wanted in (("request", dict, "an object"), ("candidates", list, "a list of texts"), ("feedback", list, "a list")):
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (key == "candidates" and not all(isinstance(text, str) for text in value)):
            raise AdapterError(f"{where}: call {record.get('call_id')}: {key!r} must be {wanted}, got {json.dumps(value)[:60]}")


def log_name(path: str | Path) -> str:
    """How messages and the adapter's card name a log: a file's name, or a database URL without its password."""
    from ..call_log import url_without_password

    return url_without_password(path) if isinstance(path, str) and "://" in path else Path(path).name


def shown_log(path: str | Path) -> str:
    """How errors name a log: a file's path as given, or a database URL without its password (never printed)."""
    return log_name(path) if isinstance(path, str) and "://" in path else str(path)


def _export_store(target: str | Path, sink: io.TextIOBase) -> None:
    """The JSONL export of an existing SQLite or PostgreSQL call log, written into ``sink``; a database URL's errors as AdapterError."""
    from ..call_log import open_call_log

    try:
        with contextlib.closing(open_call_log(target, create=False)) as log:
            log.export_jsonl(sink)  # type: ignore[arg-type]  # a text stream, as io's own are
    except BlackBoxError as exc:
        if isinstance(target, Path) or isinstance(exc, AdapterError):  # a line the export wrote that is no record says so itself
            raise
        name, message = log_name(target), str(exc)  # the log's own errors name it already, most of them
        raise AdapterError(message if name in message else f"can't read the call log {name}: {message}") from exc


CHAT_ROUTES = ("chat.completions", "chat")  # the client's route name, and the one older logs and hand-made records use


def logged_question(record: dict[str, Any]) -> str | None:
    """The question a logged call answers, as the reranker sees it at inference: the last user message
    (chat; the Responses API's `input`, a string or items) or the prompt (completions)."""
    request = record.get("request") or {}
    route = record.get("route")
    if route in CHAT_ROUTES or route == "responses":
        items = request.get("messages") if route in CHAT_ROUTES else request.get("input")
        if isinstance(items, str):
            return items
        for item in reversed(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text(item.get("content"))
        return None
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else None


def training_record(record: dict[str, Any]) -> dict[str, Any]:
    """What training reads of a logged call (its question, candidates, feedback and error), the rest of its request
    (a long chat history, tools) left out: a log of a million calls is trained from without holding their requests."""
    question = logged_question(record)
    return {
        "call_id": record.get("call_id"), "route": "completions", "request": {} if question is None else {"prompt": question},
        "candidates": record.get("candidates"), "feedback": record.get("feedback"), "error": record.get("error"),
    }


def _text(content: Any) -> str | None:
    """A message's text: a string, or its text parts joined (chat's `text`, the Responses API's `input_text`)."""
    if isinstance(content, str):
        return content
    parts = [part.get("text") for part in content if isinstance(part, dict)] if isinstance(content, list) else []
    texts = [text for text in parts if isinstance(text, str)]
    return " ".join(texts) if texts else None


def judgements(record: dict[str, Any], high_reward: float, low_reward: float) -> tuple[set[str], set[str]]:
    """(positives, negatives) a record's feedback gives: references, labels, rewards, preferences; a later rating of
    the same answer (a label or a reward) and a later preference replace the earlier (a rater's correction); AdapterError
    for feedback of the wrong types (a hand-edited export)."""
    candidates: list[str] = record.get("candidates") or []
    good: set[str] = set()
    rated_as: dict[int, bool | None] = {}  # candidate -> its latest verdict: good, bad, or neither (a middling reward)
    preferred: int | None = None
    for item in record.get("feedback") or []:  # oldest first
        reference, rated, reward, chosen = _checked(record, item)
        if reference:
            good.add(reference)
        if rated is not None and 0 <= rated < len(candidates) and (item.get("label") is not None or reward is not None):
            rated_as[rated] = _verdict(item.get("label"), reward, high_reward, low_reward)
        if chosen is not None and 0 <= chosen < len(candidates):
            preferred = chosen
    bad = {candidates[i] for i, verdict in rated_as.items() if verdict is False}
    good.update(candidates[i] for i, verdict in rated_as.items() if verdict)
    if preferred is not None:
        good.add(candidates[preferred])
        bad.update(c for i, c in enumerate(candidates) if i != preferred)
    return good, bad


def _verdict(label: Any, reward: float | None, high_reward: float, low_reward: float) -> bool | None:
    """One rating's verdict on the answer it rates: good (`correct`, a high reward), bad (`incorrect`, a low one), or neither."""
    if label == "correct" or (reward is not None and reward >= high_reward):
        return True
    if label == "incorrect" or (reward is not None and reward <= low_reward):
        return False
    return None


def _checked(record: dict[str, Any], item: Any) -> tuple[str | None, int | None, float | None, int | None]:
    """A feedback item's reference, rated candidate, reward and preferred candidate, each of its type or None."""
    def wrong(field: str, kind: str) -> AdapterError:
        return AdapterError(f"call {record.get('call_id')}: feedback {field} must be {kind}, got {item.get(field)!r}")

    if not isinstance(item, dict):
        raise AdapterError(f"call {record.get('call_id')}: a feedback item must be an object, got {item!r}")
    reference, reward = item.get("reference"), item.get("reward")
    if reference is not None and not isinstance(reference, str):
        raise wrong("reference", "text")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise wrong("reward", "a number")
    indices = []
    for field in ("candidate", "preferred"):
        value = item.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong(field, "a candidate's index")
        indices.append(value)
    return reference, indices[0], reward, indices[1]


def groups_from_log(
    records: Iterable[dict[str, Any]], *, high_reward: float = 0.5, low_reward: float = 0.0, expand_prefixes: bool = False
) -> list[RankingGroup]:
    """Ranking groups per question from logged feedback; a text judged good anywhere is never a negative."""
    good: dict[str, set[str]] = {}
    bad: dict[str, set[str]] = {}
    for record in records:
        question = logged_question(record)
        if question is None:
            continue
        pos, neg = judgements(record, high_reward, low_reward)
        if record.get("error"):  # a failed call's candidates (a cut stream's) teach nothing; the rater's reference does
            pos, neg = {item["reference"] for item in record.get("feedback") or [] if item.get("reference")}, set()
        good.setdefault(question, set()).update(pos)
        bad.setdefault(question, set()).update(neg)
    groups: list[RankingGroup] = []
    for question in sorted(good):
        positives = sorted(good[question])
        negatives = sorted(bad[question] - good[question])
        groups += build_groups(question, positives, negatives, expand_prefixes=expand_prefixes)
    return groups
