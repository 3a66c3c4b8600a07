"""The blackbox-sdk command line: log export, stats, the adapter hand-off (on SQLite and PostgreSQL logs), and example 3."""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from pg_databases import fresh_database
from servers import PostgresServer

from blackbox_sdk import cli
from blackbox_sdk import CallLogError, ConfigError
from blackbox_sdk.adapter import Adapter
from blackbox_sdk.call_log import CallLog, CallLogStore, CallRecord, PostgresCallLog
from blackbox_sdk.call_log import _export as export_module
from blackbox_sdk.call_log import _records as records_module
from blackbox_sdk.call_log._export import export_jsonl
from blackbox_sdk.cli import main
from blackbox_sdk.local import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DAY_ONE = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp()
DAY_TWO = dt.datetime(2024, 5, 2, 12, tzinfo=dt.timezone.utc).timestamp()
SECRET = "Pg5ecretPW-in-the-url"
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


_CALLS = [
    CallRecord(call_id="bb-cli-1", created=DAY_ONE, endpoint_host="api.openai.com", model="gpt-4o-mini", route="chat",
               request={"messages": [{"role": "user", "content": "2+2?"}]}, candidates=["4", "5"], chosen=[0], cost_usd=0.0015),
    CallRecord(call_id="bb-cli-2", created=DAY_ONE + 60, endpoint_host="api.openai.com", model="gpt-4o-mini", route="chat",
               request={"messages": [{"role": "user", "content": "2+2?"}]}, candidates=["4"], chosen=[0], cache_hit=True),
    CallRecord(call_id="bb-cli-3", created=DAY_TWO, endpoint_host="127.0.0.1", model="smollm2", route="completions",
               request={"prompt": "Hello"}, error="APITimeoutError: Request timed out."),
]


def _fill(log: CallLogStore) -> None:
    """Three calls over two days and two models, one a cache hit, one an error, one rated."""
    for rec in _CALLS:
        log.record(rec)
    log.feedback(_CALLS[0].call_id, label="correct")


@pytest.fixture(autouse=True)
def fixed_feedback_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feedback stamped at one time, so an SQLite and a PostgreSQL log of the same calls export alike."""
    monkeypatch.setattr(records_module, "time", SimpleNamespace(time=lambda: DAY_TWO + 3600))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """An SQLite call log of `_CALLS`."""
    path = tmp_path / "calls.db"
    with CallLog(path) as log:
        _fill(log)
    return path


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A PostgreSQL call log of the same `_CALLS`, in a database of this test's own; yields its URL."""
    with fresh_database(postgres_server) as url:
        with PostgresCallLog(url) as log:
            _fill(log)
        yield url


def _env() -> dict[str, str]:
    """A child environment that imports this checkout, without the developer's SDK settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLACKBOX_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def test_log_export_writes_one_line_per_call(log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calls.jsonl"
    assert main(["log", "export", "--log", str(log_path), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["model"] for line in lines] == ["gpt-4o-mini", "gpt-4o-mini", "smollm2"]
    assert [item["label"] for item in lines[0]["feedback"]] == ["correct"]
    assert "exported 3 calls" in capsys.readouterr().err


def test_log_export_to_dash_writes_to_stdout(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "export", "--log", str(log_path), "--out", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["route"] == "completions"


def test_stats_prints_spend_by_model_and_day_with_hit_rate(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--log", str(log_path)]) == 0
    out = capsys.readouterr().out
    assert "calls 3   errors 1   cache hits 1 (33.3%)   spend $0.001500   feedback 1" in out
    rows = {tuple(line.split()[:3]) for line in out.splitlines() if line.startswith("  2024-")}
    assert rows == {("2024-05-01", "gpt-4o-mini", "2"), ("2024-05-02", "smollm2", "1")}


def test_stats_shows_control_characters_in_a_model_name_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = "gpt\x1b]0;owned\x07\x1b[31m\nfake row"  # a name a proxy's client chose: terminal escapes, a line of its own
    with CallLog(tmp_path / "calls.db") as log:
        log.record(CallRecord(created=DAY_ONE, endpoint_host="h", model=model, route="chat", request={}, candidates=["a"], chosen=[0]))
    assert main(["stats", "--log", str(tmp_path / "calls.db")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nfake row" not in out, out
    shown = "gpt\\x1b]0;owned\\x07\\x1b[31m\\nfake row"
    assert f"  {shown}      1" in out and f"2024-05-01  {shown}      1" in out, out


def test_stats_json_matches_the_log(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--log", str(log_path), "--json"]) == 0
    with CallLog(log_path) as log:
        assert json.loads(capsys.readouterr().out) == log.stats()


def test_a_missing_log_is_an_error_and_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    assert main(["stats", "--log", str(missing)]) == 1
    assert f"no call log at {missing}" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize(
    "argv",
    [pytest.param([], id="no-command"), pytest.param(["log"], id="no-action"), pytest.param(["stats"], id="no-log")],
)
def test_incomplete_command_lines_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_adapter_train_without_the_extra_names_it_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "blackbox_sdk.adapter._cli", None)  # the import system's own "cannot import"
    assert main(["adapter", "train", "--log", "calls.db"]) == 2
    assert "pip install 'blackbox-sdk[adapter]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["stats", "--log", "{missing}"], id="stats"),
        pytest.param(["log", "export", "--log", "{missing}", "--out", "-"], id="log-export"),
        pytest.param(["adapter", "train", "--log", "{missing}", "--out", "{tmp}/adapter", "--no-progress"], id="adapter-train"),
        pytest.param(["serve", "--config", "{tmp}/missing.toml"], id="serve"),
    ],
)
def test_every_subcommand_reports_an_sdk_error_as_one_prefixed_line_on_stderr_with_status_1(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [part.format(missing=tmp_path / "missing.db", tmp=tmp_path) for part in command]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("blackbox-sdk: ") and captured.err.count("\n") == 1 and captured.out == "", captured.err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b'open_without_keys = "no"\nhost = "0.0.0.0"\n', "open_without_keys must be true or false, got 'no'"),
        (b"port = 70000\n", "port must be an integer from 1 to 65535, got 70000"),
        (b"host = 5\nopen_without_keys = true\n", "host must be an address to listen on"),
        (b"log = 5\n", "log must be a string or left out, got 5"),
        (b'rerank_n = "4"\n', "rerank_n must be an integer >= 1, got '4'"),
        (b"max_retries = -1\n", "max_retries must be an integer >= 0, got -1"),
        (b'log = "\xffcalls.db"\n', "can't read the proxy configuration"),
        (b"timeout_s = nan\n", "timeout_s must be a finite number of seconds > 0, got nan"),
        (b"header_timeout_s = inf\n", "header_timeout_s must be a finite number of seconds > 0, got inf"),
        (b"max_connections = 0\n", "max_connections must be an integer >= 1, got 0"),
    ],
    ids=["open-without-keys-a-string", "port-past-65535", "host-a-number", "log-a-number", "rerank-n-a-string", "negative-retries", "not-utf8",
         "timeout-nan", "header-timeout-inf", "max-connections-zero"],
)
def test_serve_refuses_a_config_value_of_the_wrong_type_before_it_listens(config: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_bytes(config)
    argv = [sys.executable, "-m", "blackbox_sdk", "serve", "--config", str(path), "--upstream", "http://127.0.0.1:9/v1"]
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)  # one that listens times out
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("blackbox-sdk: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("seconds", ["nan", "-5"])
def test_serve_refuses_a_graceful_timeout_that_is_not_seconds_as_a_usage_error(seconds: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "blackbox_sdk", "serve", f"--graceful-timeout={seconds}", "--upstream", "http://127.0.0.1:9/v1", "--port", str(free_port())]
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)  # one that listens times out
    assert result.returncode == 2 and "--graceful-timeout: must be a number of seconds >= 0" in result.stderr, result.stderr


def test_serve_refuses_a_missing_local_model_before_it_listens(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    argv = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", f"hf:{missing}", "--port", str(free_port())]
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)  # one that listens times out
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"blackbox-sdk: no model at {missing}") and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["stats"], ["log", "export", "--out", "-"], ["adapter", "train", "--out", "{tmp}/adapter", "--no-progress"]])
def test_every_command_names_a_log_that_is_a_folder_as_one(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    assert main([*(part.format(tmp=tmp_path) for part in command), "--log", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"blackbox-sdk: can't open the call log {folder}: it is a folder; name a file in it, such as {folder / 'calls.db'}\n"
    assert captured.out == "" and list(folder.iterdir()) == [] and not (tmp_path / "adapter").exists()


def test_adapter_train_hands_its_arguments_to_the_trainer_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing, out = tmp_path / "missing.db", tmp_path / "adapter"
    assert main(["adapter", "train", "--log", str(missing), "--out", str(out), "--no-progress"]) == 1
    assert f"no call log at {missing}" in capsys.readouterr().err
    assert not out.exists()


def test_stats_runs_as_a_real_subprocess(log_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "blackbox_sdk", "stats", "--log", str(log_path)],
        capture_output=True, text=True, env=_env(), timeout=120, cwd=log_path.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "By day (UTC) and model" in result.stdout and "smollm2" in result.stdout


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m blackbox_sdk ARGS`` as a real subprocess; fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "blackbox_sdk", *args], capture_output=True, text=True, env=_env(), timeout=120, cwd=cwd, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def test_stats_and_export_of_a_postgres_log_match_the_sqlite_logs_as_real_subprocesses(
    log_path: Path, pg_url: str, tmp_path: Path
) -> None:
    for command in (["stats"], ["stats", "--json"], ["log", "export", "--out", "-"]):
        from_pg = _run_cli(command[0], *command[1:], "--log", pg_url, cwd=tmp_path)
        from_sqlite = _run_cli(command[0], *command[1:], "--log", str(log_path), cwd=tmp_path)
        assert from_pg.stdout == from_sqlite.stdout, command
    assert "calls 3   errors 1   cache hits 1 (33.3%)   spend $0.001500   feedback 1" in _run_cli("stats", "--log", pg_url, cwd=tmp_path).stdout
    exported = _run_cli("log", "export", "--log", pg_url, "--out", str(tmp_path / "pg.jsonl"), cwd=tmp_path)
    assert "exported 3 calls" in exported.stderr
    lines = [json.loads(line) for line in (tmp_path / "pg.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["call_id"] for line in lines] == ["bb-cli-1", "bb-cli-2", "bb-cli-3"]
    assert [item["label"] for item in lines[0]["feedback"]] == ["correct"]


def _without_permission_override() -> None:
    """In the child: drop root's power to ignore file modes, so a 0o555 folder is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """The folder and its files read-only inside the block (as a copy off a server or a read-only mount is), then writable again."""
    files = [path for path in folder.iterdir() if path.is_file()]
    for path in files:
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)
        for path in files:
            path.chmod(0o644)


def _run_cli_read_only(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m blackbox_sdk ARGS`` in a child that can't write where file modes say it can't, even as root."""
    preexec = _without_permission_override if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "blackbox_sdk", *args], capture_output=True, text=True, env=_env(), timeout=120, cwd=cwd, preexec_fn=preexec
    )


def test_stats_and_export_read_a_wal_log_in_a_read_only_folder(log_path: Path, tmp_path: Path) -> None:
    expected = {command[0]: _run_cli(*command, "--log", str(log_path), cwd=tmp_path).stdout for command in (["stats", "--json"], ["log", "export", "--out", "-"])}
    assert sorted(p.name for p in log_path.parent.iterdir()) == ["calls.db"]  # closed: no -wal or -shm beside it
    with _read_only(log_path.parent):
        for command in (["stats", "--json"], ["log", "export", "--out", "-"]):
            result = _run_cli_read_only(*command, "--log", str(log_path), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert result.stdout == expected[command[0]]
        assert sorted(p.name for p in log_path.parent.iterdir()) == ["calls.db"]


def test_a_read_only_log_whose_wal_holds_writes_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    with CallLog(tmp_path / "calls.db") as log:
        log.record(_CALLS[0])
        log.flush()
        folder.mkdir()  # a copy taken while the log is open, its last call still in the -wal file
        for name in ("calls.db", "calls.db-wal"):
            (folder / name).write_bytes((tmp_path / name).read_bytes())
    with _read_only(folder):
        result = _run_cli_read_only("stats", "--log", str(folder / "calls.db"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "calls.db-wal file holds writes not yet in it" in result.stderr and "to a folder you can write" in result.stderr
    assert "writable by this process" not in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_postgres_log_is_an_error_without_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://someone:hunter2-in-the-url@127.0.0.1:{free_port()}/calls"
    assert main(["stats", "--log", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blackbox-sdk: ") and "127.0.0.1" in err and "hunter2" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["stats", "--log", "{pg}"],
        ["log", "export", "--log", "{pg}", "--out", "-"],
        ["adapter", "train", "--log", "{pg}", "--out", "{tmp}/adapter", "--no-progress"],
        ["keys", "list", "--store", "{redis}"],
    ],
    ids=["stats", "log-export", "adapter-train", "keys-list"],
)
def test_an_unreachable_store_is_one_error_line_without_its_password(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = {"pg": f"postgresql://someone:{SECRET}@127.0.0.1:{free_port()}/calls", "redis": f"redis://someone:{SECRET}@127.0.0.1:{free_port()}/0"}
    assert main([part.format(tmp=tmp_path, **urls) for part in command]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("blackbox-sdk: ") and captured.err.count("\n") == 1 and "127.0.0.1" in captured.err, captured.err
    assert SECRET not in captured.err + captured.out and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "password", "words"),
    [
        pytest.param(["stats", "--log", "postgresql://app:{pw}@127.0.0.1:{port}/calls"], "a", "connection failed", id="postgres"),
        pytest.param(["keys", "list", "--store", "redis://app:{pw}@127.0.0.1:{port}/0"], "e", "ConnectionError", id="redis"),
    ],
)
def test_a_short_password_is_hidden_without_garbling_the_drivers_words(
    command: list[str], password: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([part.format(pw=password, port=free_port()) for part in command]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blackbox-sdk: ") and err.count("\n") == 1 and "Connection refused" in err and words in err, err
    assert f":{password}@" not in err, err


@pytest.mark.parametrize("action", [["create", "--name", "team-a"], ["list"], ["revoke", "team-a"]], ids=["create", "list", "revoke"])
def test_a_key_store_that_is_a_folder_is_named_as_one(action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", *action, "--store", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"blackbox-sdk: can't open the key store {tmp_path}: it is a folder; name a file in it, such as {tmp_path / 'keys.db'}\n"
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_a_mixed_case_scheme_reads_the_log_and_a_url_libpq_refuses_never_shows_its_password(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for scheme in ("POSTGRESQL", "Postgres"):
        assert main(["stats", "--json", "--log", pg_url.replace("postgresql", scheme, 1)]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["calls"] == 3
    for bad in (pg_url.replace("@", f":{SECRET}%zz@", 1), f"postgresql://app:{SECRET}@[::1/calls"):  # a bad %-escape, an unclosed bracket
        assert main(["stats", "--log", bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("blackbox-sdk: bad PostgreSQL URL") and err.count("\n") == 1 and SECRET not in err


@pytest.mark.parametrize("url", [f"mysql://app:{SECRET}@db.internal/calls", f"postgresql+psycopg://app:{SECRET}@127.0.0.1:9/calls"])
@pytest.mark.parametrize("command", ["stats", "log export", "adapter train"])
def test_a_url_of_another_kind_is_refused_by_its_scheme_without_its_password(
    url: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {"stats": [], "log export": ["--out", "-"], "adapter train": ["--out", str(tmp_path / "adapter"), "--no-progress"]}[command]
    assert main([*command.split(), "--log", url, *extra]) == 1
    err = capsys.readouterr().err
    assert f"not a {url.partition('://')[0]}:// URL" in err and SECRET not in err
    assert list(tmp_path.iterdir()) == []


def test_log_export_refuses_an_existing_file_before_opening_the_log_unless_forced(
    log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calls.jsonl"
    out.write_text("last week's export\n")
    assert main(["log", "export", "--log", str(tmp_path / "missing.db"), "--out", str(out)]) == 2  # not "no call log": nothing opened
    assert capsys.readouterr().err == f"blackbox-sdk: the export file {out} exists; pass --force (replace=True) to replace it, or name another file\n"
    assert main(["log", "export", "--log", str(log_path), "--out", str(out)]) == 2
    assert out.read_text() == "last week's export\n" and not list(tmp_path.glob("*.partial"))
    assert main(["log", "export", "--log", str(log_path), "--out", str(out), "--force"]) == 0
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_log_export_never_replaces_a_file_made_while_it_ran_unless_forced(
    log_path: Path, tmp_path: Path, hard_links: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calls.jsonl"
    write_lines = export_module._write_lines

    def racing(calls: Any, sink: Any) -> int:
        """Another program writes the target while the export is under way."""
        out.write_text("made meanwhile\n")
        return write_lines(calls, sink)

    def no_link(source: Any, target: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(export_module, "_write_lines", racing)
    if not hard_links:  # a file system without hard links: the export is copied into a file made only if absent
        monkeypatch.setattr(export_module.os, "link", no_link)
    assert main(["log", "export", "--log", str(log_path), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"blackbox-sdk: the export file {out} exists; pass --force (replace=True) to replace it, or name another file\n"
    assert out.read_text() == "made meanwhile\n" and sorted(tmp_path.iterdir()) == [log_path, out]  # the partial removed
    with CallLog(log_path) as log, pytest.raises(ConfigError, match="exists"):
        log.export_jsonl(out, replace=False)  # the library's own check, before writing
    out.unlink()
    monkeypatch.setattr(export_module, "_write_lines", write_lines)
    assert main(["log", "export", "--log", str(log_path), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3 and sorted(tmp_path.iterdir()) == [log_path, out]
    monkeypatch.setattr(export_module, "_write_lines", racing)
    assert main(["log", "export", "--log", str(log_path), "--out", str(out), "--force"]) == 0  # --force still replaces
    assert len(out.read_text().splitlines()) == 3 and sorted(tmp_path.iterdir()) == [log_path, out]


@pytest.mark.parametrize("separator", sorted({"/", os.sep}))
def test_log_export_to_a_path_ending_in_a_separator_is_refused_as_a_folder(
    log_path: Path, tmp_path: Path, separator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = f"{tmp_path / 'sub'}{separator}"
    assert main(["log", "export", "--log", str(log_path), "--out", out]) == 1
    assert f"can't write the export {out}: ending in {separator!r}, it names a folder" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [log_path]  # no file named "sub"


@pytest.mark.parametrize("out", ["the log", "a relative path to it", "a hard link to it", "a symlink to it", "its WAL"])
def test_log_export_refuses_to_write_over_the_log_even_with_force(
    log_path: Path, out: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = log_path.parent
    monkeypatch.chdir(folder)
    if out == "a hard link to it":
        os.link(log_path, folder / "link.db")
    if out == "a symlink to it":
        (folder / "sym.db").symlink_to(log_path)
    target = {"the log": str(log_path), "a relative path to it": f"./{log_path.name}", "a hard link to it": "link.db",
              "a symlink to it": "sym.db", "its WAL": f"{log_path}-wal"}[out]
    assert main(["log", "export", "--log", str(log_path), "--out", target, "--force"]) == 1
    assert "that is the log's own file" in capsys.readouterr().err
    assert log_path.read_bytes().startswith(b"SQLite format 3\x00") and not list(folder.glob("*.partial"))
    with CallLog(log_path) as log:
        assert log.stats()["calls"] == 3


def test_a_failed_export_leaves_no_partial_file(log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing" / "calls.jsonl"
    assert main(["log", "export", "--log", str(log_path), "--out", str(out)]) == 1
    said = capsys.readouterr().err
    assert said == f"blackbox-sdk: can't write the export {out}: its folder {out.parent} does not exist\n"  # not the temporary file's name
    assert sorted(tmp_path.iterdir()) == [log_path]


@pytest.mark.parametrize("out", ["a-folder", ".", "/"])
def test_export_to_a_folder_is_refused_before_a_call_is_read(out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    calls = iter([(CallRecord(endpoint_host="h", model="m", route="chat", request={}), [])])
    with pytest.raises(CallLogError, match="it is a folder; name a file"):
        export_jsonl(calls, Path(out))
    assert next(calls, None) is not None and sorted(p.name for p in tmp_path.iterdir()) == ["a-folder"]


def test_an_export_leaves_another_exports_partial_file_alone(log_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "calls.jsonl.partial"  # the file an export to the same path, still running, writes
    other.write_text("another export's first lines\n")
    assert main(["log", "export", "--log", str(log_path), "--out", str(tmp_path / "calls.jsonl")]) == 0
    assert other.read_text() == "another export's first lines\n"
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("command", [["stats"], ["log", "export", "--out", "-"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(log_path: Path, command: list[str]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "blackbox_sdk", *command, "--log", str(log_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=log_path.parent,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # before the child writes a byte, as `| head -n 0` does
    err = child.stderr.read()
    assert child.wait(timeout=120) == 141 and err == b""


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "forced"])
def test_log_export_writes_into_a_pipe_and_never_replaces_it(log_path: Path, tmp_path: Path, force: list[str]) -> None:
    fifo = tmp_path / "to-gzip"  # what a shell's `--out >(gzip > calls.jsonl.gz)` names; /dev/stdout and /dev/null alike
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        status = main(["log", "export", "--log", str(log_path), "--out", str(fifo), *force])
    finally:
        with contextlib.suppress(OSError):  # an export that never opened the pipe: let the reader see its end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        try:
            read, _ = reader.communicate(timeout=30)
        finally:
            reader.kill()  # still waiting on a pipe a file replaced
    assert status == 0 and [json.loads(line)["call_id"] for line in read.splitlines()] == ["bb-cli-1", "bb-cli-2", "bb-cli-3"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(tmp_path.iterdir()) == [log_path, fifo]


def test_log_export_to_dev_stdout_writes_to_stdout_and_a_reader_gone_ends_it_quietly(log_path: Path) -> None:
    argv = [sys.executable, "-m", "blackbox_sdk", "log", "export", "--log", str(log_path), "--out", "/dev/stdout"]
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=log_path.parent, timeout=120)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result.stderr
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=log_path.parent)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read()
    assert child.wait(timeout=120) == 141 and err == b""


def test_stdout_of_a_non_utf8_locale_gets_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "calls.db"
    with CallLog(path) as log:
        log.record(CallRecord(endpoint_host="h", model="modèle", route="chat", request={"prompt": "Grüße"}, candidates=["😀"], chosen=[0]))
    for command in (["stats"], ["log", "export", "--out", "-"]):
        raw = io.BytesIO()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))  # what PYTHONIOENCODING=ascii or LANG=C gives
        assert main([*command, "--log", str(path)]) == 0
        sys.stdout.flush()
        assert "modèle" in raw.getvalue().decode("utf-8"), command
    assert json.loads(raw.getvalue().decode("utf-8"))["candidates"] == ["😀"]


@pytest.mark.parametrize("stdout", ["a full disk", "closed"])
@pytest.mark.parametrize("command", [["stats"], ["log", "export", "--out", "-"]])
def test_stdout_that_cant_be_written_is_a_one_line_error(log_path: Path, command: list[str], stdout: str) -> None:
    argv = [sys.executable, "-m", "blackbox_sdk", *command, "--log", str(log_path)]
    if stdout == "closed":
        argv = ["sh", "-c", 'exec "$@" >&-', "sh", *argv]
    with open(os.devnull if stdout == "closed" else "/dev/full", "wb") as sink:
        result = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, text=True, env=_env(), cwd=log_path.parent, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("blackbox-sdk: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    ("command", "kind"),
    [("stats", "another app's database"), ("log export", "another app's database"), ("adapter train", "another app's database"),
     ("stats", "an empty file"), ("log export", "an empty file"), ("adapter train", "an empty file"), ("CallLog", "an empty file")],
)
def test_a_file_that_is_not_a_call_log_is_refused_and_left_as_it_was(
    kind: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "data" / "app.db"
    other.parent.mkdir()
    other.touch()
    if kind == "another app's database":
        with contextlib.closing(sqlite3.connect(other)) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
            conn.commit()
    before = other.read_bytes()
    if command == "CallLog":  # a library reader agrees with the commands
        with pytest.raises(CallLogError) as caught:
            CallLog(other, create=False)
        message = str(caught.value)
    else:
        extra = {"stats": [], "log export": ["--out", "-"], "adapter train": ["--out", str(tmp_path / "adapter"), "--no-progress"]}[command]
        assert main([*command.split(), "--log", str(other), *extra]) == 1
        message = capsys.readouterr().err
    assert f"{other} is not a call log" in message
    if kind == "an empty file":  # issue: the trainer read a 0-byte file as an empty export; every reader now says what it is
        assert "empty file (0 bytes)" in message
    assert other.read_bytes() == before and list(other.parent.iterdir()) == [other] and not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("damage", "commands"),
    [
        ("UPDATE calls SET request = 'not json{' WHERE call_id = 'bb-cli-1'", ["log export", "adapter train"]),
        ("UPDATE feedback SET label = 'maybe'", ["log export", "adapter train"]),
        ("UPDATE calls SET model = X'FF' WHERE call_id = 'bb-cli-1'", ["stats", "log export"]),
        ("UPDATE calls SET created = 'yesterday' WHERE call_id = 'bb-cli-1'", ["stats", "log export"]),
    ],
    ids=["request-not-json", "feedback-label-unknown", "model-not-text", "created-not-a-time"],
)
def test_a_damaged_row_is_one_error_line_naming_its_call(
    damage: str, commands: list[str], log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with contextlib.closing(sqlite3.connect(log_path, isolation_level=None)) as conn:
        conn.execute(damage)  # a row edited by hand, or a damaged file: nothing the SDK writes
    extra = {"stats": [], "log export": ["--out", str(tmp_path / "calls.jsonl")], "adapter train": ["--out", str(tmp_path / "adapter"), "--no-progress"]}
    for command in commands:
        assert main([*command.split(), "--log", str(log_path), *extra[command]]) == 1, command
        err = capsys.readouterr().err
        assert err.startswith(f"blackbox-sdk: call 'bb-cli-1' in the call log {log_path} can't be read: ") and err.count("\n") == 1, err  # which log
    assert sorted(tmp_path.iterdir()) == [log_path]


@pytest.mark.parametrize("kind", ["a log with the rollback journal", "an older SDK's log, without a log_id"])
def test_reading_a_log_leaves_its_file_byte_for_byte(kind: str, log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.closing(sqlite3.connect(log_path, isolation_level=None)) as conn:
        if kind == "a log with the rollback journal":
            conn.execute("PRAGMA journal_mode=DELETE")
        else:
            conn.execute("DELETE FROM meta WHERE key = 'log_id'")
    before = log_path.read_bytes()
    assert main(["stats", "--log", str(log_path)]) == 0
    assert main(["log", "export", "--log", str(log_path), "--out", str(tmp_path / "calls.jsonl")]) == 0
    assert "calls 3" in capsys.readouterr().out and log_path.read_bytes() == before


def test_a_select_only_role_reads_the_log(pg_url: str, postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    role = f"reader_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute("DELETE FROM blackbox_meta WHERE key = 'log_id'")  # a log an SDK older than log_id wrote
    try:
        reader = pg_url.replace(f"//{postgres_server.user}@", f"//{role}@", 1)
        assert main(["stats", "--json", "--log", reader]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["calls"] == 3
        assert main(["log", "export", "--log", reader, "--out", str(tmp_path / "calls.jsonl")]) == 0
        assert len((tmp_path / "calls.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_adapter_train_reads_a_postgres_log(postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capitals = {"France": ("Paris", "Lyon"), "Italy": ("Rome", "Milan"), "Spain": ("Madrid", "Seville"), "Japan": ("Tokyo", "Osaka")}
    with fresh_database(postgres_server) as url:
        with PostgresCallLog(url) as log:
            for country, (right, wrong) in capitals.items():
                rec = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat", candidates=[wrong, right], chosen=[0],
                                 request={"messages": [{"role": "user", "content": f"What is the capital of {country}?"}]})
                log.record(rec)
                log.feedback(rec.call_id, preferred=1)
        out = tmp_path / "adapter"
        argv = ["adapter", "train", "--log", url, "--out", str(out), "--epochs", "0", "--trainable-layers", "0", "--no-progress", "--device", "cpu"]
        assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["calls"] == 4
    assert Adapter.load(out, device="cpu").metadata["trained_on"].startswith(f"call log {url}: 4 calls, 4 questions")


def test_adapter_train_on_a_postgres_log_with_nothing_to_learn_never_shows_its_password(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_password = pg_url.replace("@", f":{SECRET}@", 1)  # the test server trusts loopback: any password gets in
    argv = ["adapter", "train", "--log", with_password, "--out", str(tmp_path / "adapter"), "--no-progress", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("blackbox-sdk: ") and err.count("\n") == 1 and "no question has both" in err, err
    assert SECRET not in err and pg_url.rsplit("/", 1)[1] in err


def test_example_3_runs_and_keeps_the_key_out_of_the_log(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "03_cache_and_log.py"), "--dir", str(tmp_path)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "second lookup: ['51', '17 * 3 = 51']" in result.stdout
    assert "logged request api_key: [REDACTED]" in result.stdout
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("calls.*"))
    assert b"sk-example-" not in raw


def test_cli_module_exports_are_sorted() -> None:
    assert cli.__all__ == sorted(cli.__all__)


def test_every_adapter_train_option_says_what_it_sets() -> None:
    from blackbox_sdk.adapter._cli import _parser

    unexplained = [action.option_strings[0] for action in _parser()._actions if not action.help]
    assert unexplained == []
