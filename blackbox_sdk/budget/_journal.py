"""The owed-charge journal: a paid call's charge its ledger could not take, kept on disk until it lands.

An owed settle (``_owed``) lives in its process's memory; a process that exits or dies while its
ledger is still out of reach would lose it. So each one is also written here, one small JSON file
(mode 0600) per charge, named for its ledger, and removed once the ledger took it. The next Budget
that opens the same ledger on this host takes over the charges of processes that no longer run and
settles them (by reservation id, so a charge that landed before its owner died counts once).

The folder is ``$BLACKBOX_OWED_DIR``, else ``$XDG_STATE_HOME/blackbox-sdk/owed``, else
``~/.local/state/blackbox-sdk/owed``. A file holds what the settle needs and nothing secret: the
ledger's file path or its Redis URL without the password, the reservation, the charge, the tokens,
and the owning process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._logging import logger
from .._redis_url import is_redis_url, redact_url
from ._caps import EXACT_LIMIT
from ._owners import process_alive, this_process
from ._store import Hold, LedgerStore

VERSION = 1


@dataclass(frozen=True)
class OwedCharge:
    """One owed charge as the journal keeps it: which ledger, the hold it settles, what it charges, who owes it."""

    ledger: str
    reservation_id: str
    call_id: str
    model: str
    key: str | None
    day: str
    reserved_nano: int
    lease_s: float
    usd_nano: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    log_id: str | None
    host: str
    pid: int
    pid_start: int | None

    def settle(self, ledger: LedgerStore) -> bool:
        """Charge it on ``ledger`` (held, lapsed, or lost with the ledger's data); False when it was settled already."""
        hold = Hold(self.reservation_id, self.call_id, self.model, self.key, self.day, self.reserved_nano, self.lease_s)
        return ledger.settle(
            self.reservation_id, usd_nano=self.usd_nano, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, cached_tokens=self.cached_tokens, hold=hold, log_id=self.log_id,
        )


def journal_dir() -> Path:
    """Where owed charges are kept: $BLACKBOX_OWED_DIR, else the XDG state folder's blackbox-sdk/owed."""
    chosen = os.environ.get("BLACKBOX_OWED_DIR")
    if chosen:
        return Path(chosen).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "blackbox-sdk" / "owed"


def ledger_id(ledger: str | Path | None, path: Path | None, prefix: str) -> str | None:
    """What names a ledger in the journal (its file, or its Redis URL without the password and its key prefix);
    None for a Budget's private ledger, which no other process can open."""
    if ledger is None:
        return None
    if is_redis_url(ledger):
        return f"{redact_url(str(ledger))}#{prefix}"
    return f"sqlite:{Path(path or ledger).resolve()}"


def write(charge: OwedCharge) -> Path | None:
    """Keep ``charge`` on disk (atomically); its file, or None (with a warning) where the folder can't be written."""
    folder = journal_dir()
    target = folder / f"{_stem(charge.ledger)}-{charge.reservation_id}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")  # mode 0600
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({"version": VERSION, **dataclasses.asdict(charge)}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as error:
        logger.warning("call %s: its owed charge can't be kept in %s (%s); it is lost if this process exits first", charge.call_id, folder, error)
        return None
    return target


def remove(path: Path | None) -> None:
    """Forget a charge that landed; a file that can't be removed (a read-only folder) stays, with a warning: the
    process that adopts it later finds its charge settled already, so it is never charged twice."""
    if path is None:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("the owed charge in %s landed, but its journal file could not be removed: %s", path, error)


def orphans(ledger: str) -> list[tuple[Path, OwedCharge]]:
    """The charges owed to ``ledger`` by processes of this host that no longer run, each now kept as this process's."""
    paths = sorted(journal_dir().glob(f"{_stem(ledger)}-*.json"))
    host, pid, started = this_process() if paths else ("", 0, None)
    found = []
    for path in paths:
        charge = _read(path)
        if charge is not None and charge.ledger != ledger:
            logger.warning("skipped %s in the owed-charge journal: it names another ledger (%s)", path, charge.ledger)
        if charge is None or charge.ledger != ledger or charge.host != host or process_alive(charge.pid, charge.pid_start):
            continue
        adopted = dataclasses.replace(charge, pid=pid, pid_start=started)
        if write(adopted) is not None:
            found.append((path, adopted))
    return found


def _read(path: Path) -> OwedCharge | None:
    """The charge a journal file holds; None (with a warning) for a file that isn't one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.pop("version")
        if version != VERSION:
            raise ValueError(f"version {version!r}")
        charge = _checked(OwedCharge(**data))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning("skipped %s in the owed-charge journal: not a charge this version can settle (%s)", path, error)
        return None
    return charge


def _checked(charge: OwedCharge) -> OwedCharge:
    """``charge`` if every field is one a settle can charge; ValueError naming the first that is not (a negative
    amount would take spend off the ledger, a huge one no ledger stores)."""
    for name in ("reserved_nano", "usd_nano", "prompt_tokens", "completion_tokens", "cached_tokens", "pid"):
        value = getattr(charge, name)
        if type(value) is not int or not 0 <= value < EXACT_LIMIT:
            raise ValueError(f"{name} must be an integer from 0 below 2**53, got {value!r}")
    for name in ("ledger", "reservation_id", "call_id", "model", "day", "host", "key"):
        value = getattr(charge, name)
        if not (isinstance(value, str) and value) and not (value is None and name == "key"):
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(charge.log_id, (str, type(None))):  # "" is NO_LOG
        raise ValueError(f"log_id must be a string, got {charge.log_id!r}")
    if type(charge.lease_s) not in (int, float) or not 0 < charge.lease_s <= 1e9 or type(charge.pid_start) not in (int, type(None)):
        raise ValueError(f"lease_s must be a positive number of seconds and pid_start an integer, got {charge.lease_s!r}, {charge.pid_start!r}")
    return charge


def _stem(ledger: str) -> str:
    """A file-name prefix for one ledger's charges."""
    return hashlib.sha256(ledger.encode()).hexdigest()[:16]
