"""The proxy's virtual keys: the stores on SQLite and on a real redis-server, secrets never kept in
clear, garbage refused, Redis down fails closed, the admin routes, the CLI, and what a key means
for a real call through the SDK against llama.cpp."""

from __future__ import annotations

import contextlib
import gc
import hmac
import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from payloads import BROKEN_ADAPTERS, SHIPPED_ADAPTER, broken_adapter
from servers import RedisServer
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from blackbox_sdk import (
    BudgetExceededError,
    ConfigError,
    OpenAI,
    RateLimitExceededError,
    StoreUnavailableError,
)
from blackbox_sdk.serve import ProxyConfig, create_app
from blackbox_sdk.serve._admin import admin_routes
from blackbox_sdk.serve._key_stores import open_key_store
from blackbox_sdk.serve._key_tenants import (
    TenantDefaults,
    TenantOptions,
    key_authenticator,
    model_allowed,
    tenant_options,
)
from blackbox_sdk.serve._keys import KEY_LENGTH, KeyRecord, KeyStore, SecretKey
from blackbox_sdk.serve._run import warn_without_live_keys

ADMIN = "admin-key-for-the-tests-0123456789"
MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hi"}]
SPAWN = multiprocessing.get_context("spawn")
CLI = [sys.executable, "-m", "blackbox_sdk"]


@pytest.fixture
def store(store_at: Callable[[str], str]) -> Iterator[KeyStore]:
    """A key store with the admin key set, once on an SQLite file and once on a real redis-server."""
    with open_key_store(store_at("keys.db"), admin_key=ADMIN) as opened:
        yield opened


def _everything_stored(store: KeyStore, where: str) -> bytes:
    """Every byte the store holds: the SQLite file and its WAL, or every Redis key and value."""
    if "://" not in where:
        return b"".join(path.read_bytes() for path in Path(where).parent.glob("keys.db*"))
    client = redis.Redis.from_url(where)
    found = []
    for name in client.scan_iter("*"):
        kind = client.type(name)
        if kind == b"string":
            value: Any = client.get(name)
        elif kind == b"hash":
            value = client.hgetall(name)
        else:
            value = client.zrange(name, 0, -1)
        found.append(name + repr(value).encode())
    return b"".join(found)


def test_create_lookup_list_and_revoke(store: KeyStore) -> None:
    secret, record = store.create("team-a", budget_usd=50, per_day_usd=5, rpm=600, models=["smollm2", "gpt-4o"])
    other, other_record = store.create("team-b", tpm=1000, reranker="adapters/capitals", cache_namespace="shared")
    assert isinstance(secret, SecretKey) and secret.startswith("bb-") and len(secret) == KEY_LENGTH
    assert store.lookup(secret) == record and store.lookup(other) == other_record
    assert (record.budget_usd, record.per_day_usd, record.rpm, record.models) == (50.0, 5.0, 600, ("smollm2", "gpt-4o"))
    assert record.cache_namespace == "team-a" and other_record.cache_namespace == "shared"
    assert [r.key_id for r in store.list()] == [record.key_id, other_record.key_id]
    assert store.revoke(record.key_id).revoked
    assert store.lookup(secret) is None and store.lookup(other) == other_record  # the other key still works
    assert [r.revoked for r in store.list()] == [True, False]
    assert store.revoke(record.key_id).revoked  # twice is harmless
    assert store.revoke("team-b").key_id == other_record.key_id and store.lookup(other) is None  # by name
    with pytest.raises(ConfigError, match="no key"):
        store.revoke("key_000000000000")


def test_a_name_has_one_live_key_until_it_is_revoked(store: KeyStore) -> None:
    first, record = store.create("team-a")
    with pytest.raises(ConfigError, match="already has a live key") as refused:
        store.create("team-a", rpm=5)
    assert first not in str(refused.value)
    store.revoke("team-a")
    second, again = store.create("team-a", rpm=5)
    assert store.lookup(second) == again and store.lookup(first) is None
    assert store.find("team-a") == again and store.find(record.key_id) == KeyRecord(**{**record.__dict__, "revoked": True})


@pytest.mark.parametrize("limits", [
    pytest.param({"budget_usd": -1}, id="negative-budget"), pytest.param({"per_day_usd": float("nan")}, id="nan"),
    pytest.param({"rpm": 0}, id="zero-rpm"), pytest.param({"tpm": 1.5}, id="float-tpm"),
    pytest.param({"models": [""]}, id="empty-model"), pytest.param({"color": "red"}, id="unknown"),
    pytest.param({"rpm": 10**100}, id="rpm-past-what-a-store-holds"), pytest.param({"tpm": 2**63}, id="tpm-2**63"),
    pytest.param({"models": ["gpt\udcff"]}, id="model-lone-surrogate"),  # argv's bytes that are not UTF-8 read so
    pytest.param({"cache_namespace": "ns\ud800"}, id="namespace-lone-surrogate"), pytest.param({"reranker": "\udc80"}, id="reranker-lone-surrogate"),
])
def test_bad_limits_are_refused_before_anything_is_stored(store: KeyStore, limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        store.create("team-a", **limits)
    assert store.list() == []


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 65, "tenant:1", "é"])
def test_names_are_safe_as_file_names_and_redis_keys(tmp_path: Path, name: str) -> None:
    with open_key_store(tmp_path / "keys.db") as store, pytest.raises(ConfigError, match="key name"):
        store.create(name)


def test_the_secret_is_never_stored_in_clear(store: KeyStore, store_at: Callable[[str], str]) -> None:
    secret, record = store.create("team-a", budget_usd=5)
    stored = _everything_stored(store, store_at("keys.db"))
    assert record.key_id.encode() in stored  # the record is there: the bytes read are the store's
    assert secret.encode() not in stored and secret[3:].encode() not in stored and secret[3:20].encode() not in stored
    assert ADMIN.encode() not in stored
    assert secret not in repr(secret) and secret not in repr((secret, record)) and secret not in repr(store)
    assert f"{secret}" == secret  # printing it (once, to whoever created it) still works


def test_lookup_compares_digests_in_constant_time(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, record = store.create("team-a")
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert store.lookup(secret) == record
    assert len(compared) == 1 and compared[0][0] == compared[0][1] and len(compared[0][0]) == 64  # HMAC-SHA256 hex, not the key
    assert secret.encode() not in compared[0][0]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")  # right length and shape, one character off
    assert len(wrong) == len(secret) and store.lookup(wrong) is None
    assert store.is_admin(ADMIN) and not store.is_admin(ADMIN[:-1] + "X") and not store.is_admin(secret)


@pytest.mark.parametrize("presented", [
    pytest.param(None, id="none"), pytest.param("", id="empty"), pytest.param("x" * 10240, id="10KB"),
    pytest.param("bb-" + "é" * (KEY_LENGTH - 3), id="non-ascii"), pytest.param("bb-\x00" + "a" * (KEY_LENGTH - 4), id="nul"),
    pytest.param(b"bb-" + b"a" * (KEY_LENGTH - 3), id="bytes"), pytest.param(12345, id="int"),
    pytest.param("bb-" + "a" * (KEY_LENGTH - 3), id="right-shape"), pytest.param("Bearer bb-abc", id="bearer"),
])
def test_garbage_is_refused_without_raising(store: KeyStore, presented: Any) -> None:
    secret, _ = store.create("team-a")
    assert store.lookup(presented) is None
    assert store.lookup(secret + "x") is None and store.lookup(" " + secret[1:]) is None
    assert store.is_admin(presented) is False


def test_an_admin_key_is_needed_and_never_weak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_key_store(tmp_path / "keys.db") as store:
        assert not store.is_admin("") and not store.is_admin(None) and not store.is_admin(ADMIN)
    with pytest.raises(ConfigError, match="at least 16"):
        open_key_store(tmp_path / "keys.db", admin_key="short")
    monkeypatch.setenv("BLACKBOX_ADMIN_KEY", ADMIN)
    with open_key_store(tmp_path / "keys.db") as store:
        assert store.is_admin(ADMIN)


def test_a_file_that_is_not_a_key_store_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(ConfigError, match="can't open the key store"):
        open_key_store(tmp_path / "junk.db")
    with pytest.raises(ConfigError, match="postgresql://"):
        open_key_store("postgresql://localhost/keys")


def test_another_apps_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    other = tmp_path / "other-app.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
    before = other.read_bytes()
    with pytest.raises(ConfigError, match=f"{other} has tables of another application: users; "):
        open_key_store(other)
    refused = _cli("create", "--name", "team-a", "--store", str(other))
    assert refused.returncode == 1 and refused.stderr == f"blackbox-sdk: {other} has tables of another application: users; it was left as it was: give the key store its own file\n"
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other-app.db"]  # no tables, no WAL
    (tmp_path / "empty.db").touch()  # a new or empty file, and a key store opened again, are fine
    for _ in range(2):
        with open_key_store(tmp_path / "empty.db") as store:
            assert store.list() == []


def _create_keys(path: str, name: str, count: int, ready: Any, out: Any) -> None:
    """A spawned process: open the shared file at the same moment as the other, create keys, send them back."""
    ready.wait(timeout=60)
    with open_key_store(path) as store:
        out.put([str(store.create(f"{name}-{i}", rpm=i + 1)[0]) for i in range(count)])


def test_two_processes_create_keys_on_one_sqlite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.db")  # a fresh file: both processes race to make its schema and pepper
    ready, out = SPAWN.Barrier(2), SPAWN.Queue()
    workers = [SPAWN.Process(target=_create_keys, args=(path, name, 15, ready, out)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    secrets = [out.get(timeout=120), out.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    with open_key_store(path) as store:
        found = {store.lookup(secret).name for batch in secrets for secret in batch}  # type: ignore[union-attr]
        assert found == {f"{name}-{i}" for name in ("a", "b") for i in range(15)} and len(store.list()) == 30


def test_redis_down_fails_closed(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://:hunter2-redis-pw@")  # a password, to see it kept out of errors
    with open_key_store(redis_server.url) as store:
        secret, _ = store.create("team-a")
    redis_server.stop()
    for where in (redis_server.url, url):
        with open_key_store(where) as down:  # opening does not connect yet
            for action in (lambda: down.lookup(secret), down.list, lambda: down.create("team-b"), lambda: down.revoke("team-a")):
                with pytest.raises(StoreUnavailableError) as failed:
                    action()
                assert "hunter2" not in str(failed.value) and secret not in str(failed.value)
            assert down.lookup(None) is None  # garbage is refused without asking the store
    redis_server.start()  # back, but empty: the key is gone, and the store says so instead of failing
    with open_key_store(redis_server.url) as store:
        assert store.lookup(secret) is None


def test_a_replica_sees_keys_another_one_created_and_revoked(redis_server: RedisServer) -> None:
    with open_key_store(redis_server.url, admin_key=ADMIN) as one, open_key_store(redis_server.url) as two:
        secret, record = one.create("team-a", models="smollm2")
        assert two.lookup(secret) == record
        two.revoke(record.key_id)
        assert one.lookup(secret) is None
        one.create("team-b")
        with pytest.raises(ConfigError, match="already has a live key"):
            two.create("team-b")


def test_replicas_agree_on_keys_after_redis_restarts_without_its_data(redis_server: RedisServer) -> None:
    """A replica running across the restart kept the old pepper: it must not write or look up keys under it."""
    with open_key_store(redis_server.url) as old:
        old.create("before")  # the pepper is read, and kept by this replica
        redis_server.stop()
        redis_server.start()  # empty: a new pepper comes with the next write
        with open_key_store(redis_server.url) as new:
            secret, record = old.create("team-a")  # the old replica writes first
            assert new.lookup(secret) == record
        redis_server.stop()
        redis_server.start()
        with open_key_store(redis_server.url) as new:
            secret, record = new.create("team-b")  # a new replica writes first
            assert old.lookup(secret) == record


def _admin(store: KeyStore) -> TestClient:
    """The admin routes in a bare Starlette app."""
    return TestClient(Starlette(routes=admin_routes(store)))


def test_admin_routes_create_list_and_revoke(store: KeyStore) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    with _admin(store) as http:
        created = http.post("/admin/keys", json={"name": "team-a", "budget_usd": 50, "rpm": 600, "models": ["smollm2"]}, headers=admin)
        assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
        body = created.json()
        record = store.lookup(body["key"])
        assert record is not None and record.key_id == body["key_id"] and body["models"] == ["smollm2"] and body["rpm"] == 600
        listed = http.get("/admin/keys", headers=admin)
        assert listed.status_code == 200 and [item["name"] for item in listed.json()["data"]] == ["team-a"]
        assert body["key"] not in listed.text and "digest" not in listed.text
        revoked = http.delete(f"/admin/keys/{record.key_id}", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True and store.lookup(body["key"]) is None
        assert http.delete("/admin/keys/key_000000000000", headers=admin).status_code == 404
        bad = http.post("/admin/keys", json={"name": "team-b", "rpm": -1}, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert http.post("/admin/keys", content=b"{not json", headers=admin).status_code == 400
        assert http.post("/admin/keys", content=b" " * (65 * 1024), headers=admin).status_code == 413


@pytest.mark.parametrize("body", [
    pytest.param(b'{"name": "team-a", "models": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", id="nested-20000-deep"),
    pytest.param(b'{"name": "team-a", "models": ["\\ud800"]}', id="a-lone-surrogate"),
    pytest.param(b'{"name": "team-a", "rpm": 1' + b"0" * 100 + b"}", id="rpm-10**100"),
    pytest.param(b'{"name": "team-a", "budget_usd": NaN}', id="NaN"),
    pytest.param(json.dumps({"name": "team-a"}).encode("utf-16"), id="utf-16"),
])
def test_a_bad_admin_body_is_a_400_that_stores_nothing_and_the_list_still_answers(store: KeyStore, body: bytes) -> None:
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    with _admin(store) as http:
        answer = http.post("/admin/keys", content=body, headers=admin)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        listed = http.get("/admin/keys", headers=admin)
        assert listed.status_code == 200 and listed.json()["data"] == []


@pytest.mark.parametrize("how", BROKEN_ADAPTERS)
def test_a_key_whose_reranker_cant_load_is_refused_400_when_created_not_on_its_first_call(store: KeyStore, tmp_path: Path, how: str) -> None:
    folder, named = broken_adapter(tmp_path, how)
    admin = {"authorization": f"Bearer {ADMIN}"}
    with _admin(store) as http:
        refused = http.post("/admin/keys", json={"name": "team-a", "reranker": str(folder)}, headers=admin)
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["param"] == "reranker" and error["code"] == "invalid_reranker"
        assert error["message"].startswith("reranker: ") and named in error["message"] and store.list() == []
        created = http.post("/admin/keys", json={"name": "team-a", "reranker": str(SHIPPED_ADAPTER)}, headers=admin)
        assert created.status_code == 201 and created.json()["reranker"] == str(SHIPPED_ADAPTER)


@pytest.mark.parametrize("path", [pytest.param("adapters/a\x00b", id="a-nul-byte"), pytest.param("a" * 300, id="a-name-too-long")])
def test_a_reranker_path_the_system_cant_look_up_is_a_400_not_a_500(store: KeyStore, path: str) -> None:
    """Adapter.load's ValueError (a NUL byte) and OSError (ENAMETOOLONG) were a 500 before."""
    with _admin(store) as http:
        refused = http.post("/admin/keys", json={"name": "team-a", "reranker": path}, headers={"authorization": f"Bearer {ADMIN}"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_reranker" and store.list() == []


async def _post_chunks(app: ASGIApp, path: str, headers: dict[str, str], chunks: int = 1000) -> tuple[int, int]:
    """POST a chunked body of `chunks` 16 KiB pieces straight to an ASGI app: its answer's status and how many pieces it read."""
    read = status = 0

    async def receive() -> Message:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"k" * 16384, "more_body": read < chunks}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    raw_headers = [(name.encode(), value.encode()) for name, value in headers.items()]
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return status, read


async def test_login_and_key_creation_stop_reading_a_body_at_their_limit(tmp_path: Path) -> None:
    with open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as keys:
        app = create_app(ProxyConfig(upstream="http://127.0.0.1:9/v1"), authenticate=lambda key: None, routes=admin_routes(keys), keys=keys)
        login = await _post_chunks(app, "/login", {"content-type": "application/x-www-form-urlencoded"})
        created = await _post_chunks(app, "/admin/keys", {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
        assert keys.list() == []
    assert login == (413, 1)  # 16 MiB offered, one piece read: past MAX_LOGIN_BODY (4 KiB)
    assert created == (413, 5)  # past MAX_ADMIN_BODY_BYTES (64 KiB)


ADMIN_REFUSAL = "This route needs the proxy's admin key: send it in the Authorization header as a bearer token."


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="none"), pytest.param({"authorization": "Bearer wrong-admin-key-0123456789"}, id="wrong"),
    pytest.param({"authorization": ADMIN}, id="no-bearer"), pytest.param({"authorization": "Bearer "}, id="empty"),
])
def test_admin_routes_refuse_without_the_admin_key(store: KeyStore, headers: dict[str, str]) -> None:
    tenant, _ = store.create("team-a")
    with _admin(store) as http:
        for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("DELETE", "/admin/keys/team-a")):
            for sent in (headers, {"authorization": f"Bearer {tenant}"}):  # a tenant's key is not the admin's
                answer = http.request(method, path, headers=sent, json={"name": "intruder"})
                assert answer.status_code == 401
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"} and answer.json()["error"]["code"] == "invalid_api_key"
                assert answer.json()["error"]["message"] == ADMIN_REFUSAL  # its hint whole, not redacted as if it held a key
    assert [record.name for record in store.list()] == ["team-a"] and not store.list()[0].revoked


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The keys command in a subprocess."""
    return subprocess.run([*CLI, "keys", *args], check=False, capture_output=True, text=True, timeout=120)


def test_the_cli_creates_lists_and_revokes(store_at: Callable[[str], str]) -> None:
    where = store_at("keys.db")
    created = _cli("create", "--name", "team-a", "--budget-usd", "50", "--per-day-usd", "5", "--rpm", "600",
                   "--reranker", "adapters/capitals", "--models", "smollm2,gpt-4o", "--store", where)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "budget $50" in created.stderr and secret not in created.stderr
    with open_key_store(where) as store:
        record = store.lookup(secret)
    assert record is not None and record.models == ("smollm2", "gpt-4o") and record.reranker == "adapters/capitals"
    assert _cli("revoke", record.key_id, "--store", where).returncode == 0
    listed = _cli("list", "--json", "--store", where)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["revoked"] is True and secret not in listed.stdout
    refused = _cli("create", "--name", "bad name", "--store", where)
    assert refused.returncode == 1 and "key name" in refused.stderr


@pytest.mark.parametrize("stdout", ["a full disk", "a reader gone"])
def test_a_created_key_that_cant_be_shown_is_revoked_and_frees_its_name(stdout: str, tmp_path: Path) -> None:
    where = str(tmp_path / "keys.db")
    argv = [*CLI, "keys", "create", "--name", "team-a", "--store", where]
    if stdout == "a full disk":
        with open("/dev/full", "w") as full:
            failed = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "so it is revoked" in failed.stderr, failed.stderr
    else:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # `keys create ... | head -n 0`: the key is read by nobody
        assert child.wait(timeout=120) == 141 and child.stderr.read() == b""
    with open_key_store(where) as store:
        assert [(record.name, record.revoked) for record in store.list()] == [("team-a", True)]
    again = _cli("create", "--name", "team-a", "--store", where)
    assert again.returncode == 0 and again.stdout.strip(), again.stderr


def test_the_cli_reads_no_store_it_was_not_given(tmp_path: Path) -> None:
    missing = _cli("list", "--store", str(tmp_path / "nowhere.db"))
    assert missing.returncode == 1 and "no key store" in missing.stderr and not (tmp_path / "nowhere.db").exists()


def test_the_cli_refuses_a_url_urllib_cannot_split_in_one_line() -> None:
    refused = _cli("list", "--store", "redis://:pw-in-the-url@[::1/0")  # an unclosed IPv6 bracket
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "redis://[::1/0 is not valid" in refused.stderr and "pw-in-the-url" not in refused.stderr


def test_model_allowed() -> None:
    anything = KeyRecord(key_id="key_1", name="a")
    some = KeyRecord(key_id="key_2", name="b", models=("smollm2", "gpt-4o"))
    assert model_allowed(anything, "gpt-5") and model_allowed(some, "smollm2")
    assert not model_allowed(some, "gpt-4o-mini") and not model_allowed(some, None) and not model_allowed(some, ["smollm2"])


def test_tenant_defaults_follow_the_proxy_configuration(tmp_path: Path) -> None:
    budget = {"total_usd": 100, "ledger": str(tmp_path / "ledger.db"), "prices": {MODEL: {"input": 1, "output": 1}}, "policy": "shrink"}
    defaults = TenantDefaults.from_proxy(cache=str(tmp_path / "cache"), budget=budget, rate_limit={"rpm": 10, "store": "redis://h:1/0"})
    assert defaults.ledger == tmp_path / "ledger-tenants" and defaults.rate_store == "redis://h:1/0"
    assert dict(defaults.budget_options) == {"prices": budget["prices"], "policy": "shrink"}  # the proxy's own caps stay its own
    assert defaults.tenant_ledger("team-a") == (tmp_path / "ledger-tenants" / "team-a.sqlite3", "blackbox:ledger:tenant:team-a:")
    shared = TenantDefaults.from_proxy(budget={"ledger": "redis://h:1/0", "ledger_prefix": "p:"})
    assert shared.tenant_ledger("team-a") == ("redis://h:1/0", "p:tenant:team-a:")
    plain = tenant_options(KeyRecord(key_id="key_1", name="team-a"), TenantDefaults())
    assert plain == {"budget_key": "team-a"}  # no limit on the key: the proxy's own options stay in place


def test_a_keys_limits_hold_on_real_calls(llama_server: str, tmp_path: Path) -> None:
    defaults = TenantDefaults(ledger=tmp_path / "tenants", cache=tmp_path / "cache", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    with open_key_store(tmp_path / "keys.db") as store:
        poor_key, _ = store.create("team-a", per_day_usd=1e-6)
        busy_key, _ = store.create("team-b", budget_usd=1.0, rpm=1, reranker="adapters/capitals", cache_namespace="team-b-ns")
        authenticate = key_authenticator(store, tenants)
        poor, busy = authenticate(poor_key), authenticate(busy_key)
        assert poor is not None and busy is not None and authenticate("bb-" + "x" * (KEY_LENGTH - 3)) is None
        assert authenticate(busy_key).options is busy.options  # type: ignore[union-attr]  # built once per key
    assert busy.options["reranker"] == "adapters/capitals" and busy.options["cache"].namespace == "team-b-ns"
    client = OpenAI(base_url=llama_server, api_key="sk-test")
    poor_client = client.with_options(**{name: value for name, value in poor.options.items() if name != "cache"})
    with pytest.raises(BudgetExceededError) as refused:
        poor_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert refused.value.scope == "per_day"
    busy_options = {name: value for name, value in busy.options.items() if name not in ("cache", "reranker")}
    busy_client = client.with_options(**busy_options)
    busy_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    with pytest.raises(RateLimitExceededError):
        busy_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert busy.options["budget"].spent(key="team-b") > 0 and poor.options["budget"].spent() == 0  # ledgers of their own
    assert sorted(path.name for path in (tmp_path / "tenants").glob("*.sqlite3")) == ["team-a.sqlite3", "team-b.sqlite3"]
    tenants.close()


def test_keys_in_front_of_the_proxy(llama_server: str, tmp_path: Path) -> None:
    with open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as store:
        tenants = TenantOptions(TenantDefaults())
        app = create_app(ProxyConfig(upstream=llama_server), authenticate=key_authenticator(store, tenants))
        app.router.routes[:0] = admin_routes(store)
        admin = {"authorization": f"Bearer {ADMIN}"}
        chat = {"model": MODEL, "messages": HELLO, "max_tokens": 4}
        with TestClient(app) as http:
            deadline = time.monotonic() + 120
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the proxy did not become ready"
                time.sleep(0.05)  # polling /readyz until the upstream client is built
            key = http.post("/admin/keys", json={"name": "team-a", "rpm": 1, "models": [MODEL]}, headers=admin).json()["key"]
            other = http.post("/admin/keys", json={"name": "team-b", "models": ["gpt-4o"]}, headers=admin).json()["key"]
            as_a, as_b = {"authorization": f"Bearer {key}"}, {"authorization": f"Bearer {other}"}
            assert http.post("/v1/chat/completions", json=chat, headers=as_a).status_code == 200
            limited = http.post("/v1/chat/completions", json=chat, headers=as_a)
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1  # team-a's own rpm
            tiny = http.post("/admin/keys", json={"name": "team-c", "tpm": 5, "models": [MODEL]}, headers=admin).json()["key"]
            never = http.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {tiny}"})
            assert never.status_code == 429 and never.json()["error"]["code"] == "rate_limit_exceeded"  # more than tpm at once
            assert never.headers["x-should-retry"] == "false" and "retry-after" not in never.headers  # no wait lets it through
            assert http.post("/v1/chat/completions", json=chat, headers=as_b).json()["error"]["code"] == "model_not_found"
            typed = http.post("/v1/chat/completions", json={**chat, "model": 5}, headers=as_b)  # not a name: a 400, as OpenAI's
            assert typed.status_code == 400 and (typed.json()["error"]["code"], typed.json()["error"]["param"]) == ("invalid_type", "model")
            for headers in ({}, {"authorization": "Bearer " + "x" * 10240}, {"authorization": f"Bearer {ADMIN}"}):
                assert http.post("/v1/chat/completions", json=chat, headers=headers).status_code == 401
            assert http.delete("/admin/keys/team-a", headers=admin).status_code == 200
            refused = http.post("/v1/chat/completions", json=chat, headers=as_a)
            assert refused.status_code == 401 and key not in refused.text
        tenants.close()


def test_a_keys_rate_window_waits_under_the_proxys_wait_policy(llama_server: str, tmp_path: Path) -> None:
    now, waits = [time.time()], []

    async def asleep(seconds: float) -> None:
        """The proxy's wait, on a clock of the test's own: nothing really sleeps."""
        waits.append(seconds)
        now[0] += seconds

    rate_limit = {"rpm": 1000, "per": "key", "policy": "wait", "max_wait_s": 120, "clock": lambda: now[0], "asleep": asleep}
    config = ProxyConfig(upstream=llama_server, rate_limit=rate_limit)
    with open_key_store(tmp_path / "keys.db") as store:
        key, _ = store.create("team-a", rpm=1, models=[MODEL])
        tenants = TenantOptions(TenantDefaults.from_proxy(rate_limit=config.rate_limit))
        app = create_app(config, authenticate=key_authenticator(store, tenants))
        chat, as_a = {"model": MODEL, "messages": HELLO, "max_tokens": 4}, {"authorization": f"Bearer {key}"}
        with TestClient(app) as http:
            deadline = time.monotonic() + 120
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the proxy did not become ready"
                time.sleep(0.05)  # polling /readyz until the upstream client is built
            assert http.post("/v1/chat/completions", json=chat, headers=as_a).status_code == 200
            waited = http.post("/v1/chat/completions", json=chat, headers=as_a)  # the key's rpm=1 is full: it waits its turn
            assert waited.status_code == 200 and sum(waits) == pytest.approx(60)
            too_long = TenantDefaults.from_proxy(rate_limit={**rate_limit, "max_wait_s": 10})
            refused = tenant_options(KeyRecord(key_id="key_1", name="team-a", rpm=1), too_long)["rate_limit"]
            assert (refused.policy, refused.max_wait_s, refused.window_s) == ("wait", 10, 60)  # a wait past max_wait_s raises
        tenants.close()


def test_revoking_by_the_secret_itself_does_not_echo_it(store: KeyStore) -> None:
    secret, _ = store.create("team-a")
    with pytest.raises(ConfigError, match="not the key itself") as refused:
        store.revoke(secret)
    assert secret not in str(refused.value) and store.lookup(secret) is not None


def test_a_keys_store_refusing_its_password_after_start_is_the_operators_500_not_a_400(redis_server: RedisServer, tmp_path: Path) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("requirepass", "old-pw-s3cret")
    ledger = redis_server.url.replace("redis://", "redis://:old-pw-s3cret@")
    tenants = TenantOptions(TenantDefaults(ledger=ledger, budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}}))
    with open_key_store(tmp_path / "keys.db") as store:
        capped, _ = store.create("team-a", budget_usd=1.0)  # its ledger opens on its first request
        plain, _ = store.create("team-b")
        app = create_app(ProxyConfig(upstream="http://127.0.0.1:9/v1", max_retries=0), authenticate=key_authenticator(store, tenants))
        with TestClient(app) as http:
            admin.config_set("requirepass", "new-pw-s3cret")  # the operator's change, once the proxy serves
            refused = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, headers={"authorization": f"Bearer {capped}"})
            bad = http.post("/v1/chat/completions", json={"model": MODEL}, headers={"authorization": f"Bearer {plain}"})
    assert refused.status_code == 500 and refused.headers["x-should-retry"] == "false"  # no client retry mends it
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "key_misconfigured")
    assert "was refused by the Redis server" in error["message"] and "s3cret" not in refused.text, error
    assert f":{redis_server.port}" not in refused.text  # the store's address is the operator's (in the log), not the client's
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"  # the client's own fault stays 400
    tenants.close()


def test_a_key_pointed_at_each_new_version_of_its_reranker_keeps_only_the_one_it_names_loaded(tmp_path: Path) -> None:
    from blackbox_sdk import OpenAI
    from blackbox_sdk.adapter import Adapter
    from blackbox_sdk.serve._tenants import Tenant, TenantClients

    clients, names = TenantClients(OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-unused")), []
    for version in range(4):  # the operator points team-a's key at adapters/v0, v1, ... in turn
        folder = shutil.copytree(SHIPPED_ADAPTER, tmp_path / f"v{version}")
        names.append(clients.client(Tenant("team-a", options={"reranker": str(folder)})).options.reranker.__self__.lora_name)
    gc.collect()
    later = Adapter.load(SHIPPED_ADAPTER)  # the next load on the shared base takes off what was let go
    assert later.base is not None and later.base.peft is not None
    assert names[-1] in later.base.peft.peft_config and not set(names[:-1]) & set(later.base.peft.peft_config)


def test_checking_a_keys_reranker_leaves_nothing_on_the_shared_base(store: KeyStore) -> None:
    from blackbox_sdk.adapter._lora import _BASES

    def attached() -> dict[tuple[str, str], list[str]]:
        return {key: list(base.peft.peft_config) if base.peft is not None else [] for key, base in _BASES.items()}

    before = attached()
    with _admin(store) as http:
        for name in ("team-a", "team-b"):  # each key's check loads the folder; none may stay loaded on a base
            created = http.post("/admin/keys", json={"name": name, "reranker": str(SHIPPED_ADAPTER)}, headers={"authorization": f"Bearer {ADMIN}"})
            assert created.status_code == 201, created.text
    assert attached() == before


def test_a_key_naming_the_proxys_own_reranker_folder_shares_its_loaded_adapter(tmp_path: Path) -> None:
    from blackbox_sdk import OpenAI
    from blackbox_sdk.serve._tenants import Tenant, TenantClients

    folder = shutil.copytree(SHIPPED_ADAPTER, tmp_path / "adapter")
    base = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-unused", reranker=str(folder))  # the proxy's --reranker
    clients = TenantClients(base)
    assert base.holds_reranker(tmp_path / "." / "adapter") and not base.holds_reranker(tmp_path / "another")  # what TenantClients asks
    for name, named in (("team-a", str(folder)), ("team-b", str(tmp_path / "." / "adapter"))):  # the same folder, spelt two ways
        tenant = clients.client(Tenant(name, options={"reranker": named}))
        assert tenant.options.reranker.__self__ is base.options.reranker.__self__  # one adapter, its deltas loaded once


@pytest.mark.parametrize("per", ["client", "key"])
def test_a_keys_own_rate_limits_narrow_the_proxys_and_never_drop_one(per: str, store_at: Callable[[str], str]) -> None:
    """A key that sets only rpm keeps the proxy's tpm, one that sets only tpm keeps its rpm; under a proxy-wide
    window (`per = "client"`) every key's calls count in it too, so two keys together stay within it."""
    from servers import InstantUpstream, Proxy

    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}
    upstream = InstantUpstream(answer)
    rate_limit = {"rpm": 2, "tpm": 400, "per": per, "store": store_at("rate.db")}
    config = ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit)
    tenants = TenantOptions(TenantDefaults.from_proxy(rate_limit=rate_limit))
    with open_key_store(store_at("keys.db"), admin_key=ADMIN) as keys:
        secrets = {name: str(keys.create(name, **limits)[0]) for name, limits in (("team-a", {"rpm": 100}), ("team-b", {"tpm": 100_000}))}
        try:
            with Proxy(config, authenticate=key_authenticator(keys, tenants), keys=keys, tenants=tenants) as running:
                def ask(name: str, max_tokens: int = 4) -> openai.APIResponse[Any]:
                    return running.client(api_key=secrets[name], max_retries=0).chat.completions.with_raw_response.create(
                        model=MODEL, messages=HELLO, max_tokens=max_tokens)

                with pytest.raises(openai.RateLimitError) as too_large:  # team-a sets rpm only: the proxy's tpm=400 still holds
                    ask("team-a", max_tokens=1000)
                ask("team-a")
                ask("team-b")
                if per == "key":  # team-b sets tpm only: the proxy's rpm=2 per key still holds for it
                    ask("team-b")
                with pytest.raises(openai.RateLimitError) as third:
                    ask("team-b")
                if per == "client":  # the proxy-wide window holds both keys' calls: no room for team-a either
                    with pytest.raises(openai.RateLimitError):
                        ask("team-a")
                else:
                    ask("team-a")
        finally:
            tenants.close()
            upstream.close()
    assert too_large.value.type == "tokens" and third.value.type == "requests"


def _open_files_under(folder: Path) -> int:
    """How many of this process's file descriptors point into `folder` (SQLite handles, their journals)."""
    fds = Path("/proc/self/fd")
    targets = [os.path.realpath(fds / name) for name in os.listdir(fds)]
    return sum(target.startswith(str(folder.resolve())) for target in targets)


def test_a_replaced_or_revoked_keys_stores_close_after_its_last_call_ends(tmp_path: Path) -> None:
    tenants_dir, cache = tmp_path / "tenants", tmp_path / "cache"
    defaults = TenantDefaults(ledger=tenants_dir, cache=cache, rate_store=tmp_path / "rates.db", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    with open_key_store(tmp_path / "keys.db") as store:
        authenticate = key_authenticator(store, tenants)
        first, _ = store.create("team-a", budget_usd=1.0, rpm=5)
        old = authenticate(first)
        assert old is not None and _open_files_under(tenants_dir) > 0 and _open_files_under(cache) > 0
        store.revoke("team-a")
        second, _ = store.create("team-a", budget_usd=2.0, rpm=5)  # the name re-created with a new cap
        new = authenticate(second)
        assert new is not None and new.options is not old.options
        assert old.options["budget"].spent() == 0 and old.options["cache"].stats is not None  # its call in flight still runs on them
        opened_by_both = _open_files_under(tenants_dir) + _open_files_under(cache)
        assert old.release is not None and new.release is not None
        old.release()  # the old record's last request ends: what it opened closes, the new record's stays
        assert 0 < _open_files_under(tenants_dir) + _open_files_under(cache) < opened_by_both
        assert new.options["budget"].spent() == 0
        new.release()
        tenants.forget("team-a")  # revoked by the admin route: nothing of team-a stays open
        assert _open_files_under(tenants_dir) + _open_files_under(cache) == 0
    tenants.close()


QUICK_ANSWER = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}


def test_a_key_revoked_while_its_call_is_in_flight_closes_its_ledger_and_cache_once_the_call_ends(tmp_path: Path) -> None:
    from servers import InstantUpstream

    entered, go = threading.Event(), threading.Event()
    upstream = InstantUpstream(QUICK_ANSWER, before=lambda: (entered.set(), go.wait(30)))  # the call waits upstream until told
    defaults = TenantDefaults(ledger=tmp_path / "tenants", cache=tmp_path / "cache", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    chat, admin = {"model": MODEL, "messages": HELLO, "max_tokens": 4}, {"authorization": f"Bearer {ADMIN}"}
    try:
        with open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as store:
            key, _ = store.create("team-a", budget_usd=1.0)
            app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, tenants),
                             routes=admin_routes(store, tenants))
            with TestClient(app) as http:
                deadline = time.monotonic() + 120
                while http.get("/readyz").status_code != 200:
                    assert time.monotonic() < deadline, "the proxy did not become ready"
                    time.sleep(0.05)  # polling /readyz until the upstream client is built
                answers: list[Any] = []
                call = threading.Thread(target=lambda: answers.append(http.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"})))
                call.start()
                assert entered.wait(30)
                assert http.delete("/admin/keys/team-a", headers=admin).status_code == 200
                assert _open_files_under(tmp_path / "tenants") > 0  # the call in flight still holds its ledger
                go.set()
                call.join(30)
                assert answers[0].status_code == 200 and float(answers[0].headers["x-blackbox-cost-usd"]) > 0
                assert _open_files_under(tmp_path / "tenants") + _open_files_under(tmp_path / "cache") == 0
    finally:
        go.set()
        tenants.close()
        upstream.close()


def test_a_key_re_created_with_the_same_limits_runs_on_its_new_rate_window_not_the_closed_one(tmp_path: Path) -> None:
    from servers import InstantUpstream, Proxy

    upstream = InstantUpstream(QUICK_ANSWER)
    tenants = TenantOptions(TenantDefaults(rate_store=tmp_path / "rates.db"))
    try:
        with open_key_store(tmp_path / "keys.db") as store:
            first, _ = store.create("team-a", rpm=100)
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, tenants)) as running:
                def ask(key: str) -> None:
                    running.client(api_key=key, max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)

                ask(first)
                store.revoke("team-a")
                second, _ = store.create("team-a", rpm=100)  # equal options, new objects: the old ones were closed
                ask(second)
                tenants.forget("team-a")
                assert _open_files_under(tmp_path / "rates.db") == 0  # no window reopened by a client copy kept on the old options
    finally:
        tenants.close()
        upstream.close()


def test_revoking_a_key_drops_its_client_copy_and_the_reranker_only_it_named(tmp_path: Path) -> None:
    folder = str(shutil.copytree(SHIPPED_ADAPTER, tmp_path / "adapter"))
    tenants = TenantOptions(TenantDefaults())
    with open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as store:
        key, _ = store.create("team-a", reranker=folder)
        authenticate = key_authenticator(store, tenants)
        app = create_app(ProxyConfig(upstream="http://127.0.0.1:9/v1", max_retries=0), authenticate=authenticate, routes=admin_routes(store, tenants))
        with TestClient(app) as http:
            deadline = time.monotonic() + 120
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the proxy did not become ready"
                time.sleep(0.05)  # polling /readyz until the upstream client is built
            tenant = authenticate(key)
            clients = app.state.proxy.client_for(None) and app.state.proxy._ready()
            clients.client(tenant)  # what the key's first request builds: its copy, its reranker loaded
            assert clients.built(tenant) is not None and list(clients._rerankers) == [folder]
            assert http.delete("/admin/keys/team-a", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
            assert clients.built(tenant) is None and clients._rerankers == {}  # the adapter leaves memory with its last call
    tenants.close()


def test_a_keys_streamed_request_lets_go_of_its_options_when_the_stream_ends(tmp_path: Path) -> None:
    from servers import sse_upstream

    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    defaults = TenantDefaults(ledger=tmp_path / "tenants", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    with sse_upstream(lambda headers: body.encode()) as upstream, open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as store:
        key, _ = store.create("team-a", budget_usd=1.0)
        app = create_app(ProxyConfig(upstream=upstream, max_retries=0), authenticate=key_authenticator(store, tenants), routes=admin_routes(store, tenants))
        with TestClient(app) as http:
            deadline = time.monotonic() + 120
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the proxy did not become ready"
                time.sleep(0.05)  # polling /readyz until the upstream client is built
            streamed = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": True}, headers={"authorization": f"Bearer {key}"})
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
            assert _open_files_under(tmp_path / "tenants") > 0
            assert http.delete("/admin/keys/team-a", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
            assert _open_files_under(tmp_path / "tenants") == 0  # the ended stream held its options no more: closed at once
    tenants.close()


def test_a_key_revoked_from_the_cli_stops_at_once_and_its_stores_close_when_it_is_presented_again(
    tmp_path: Path, store_at: Callable[[str], str]
) -> None:
    """Revoked in the key store by another process (the CLI, another replica), the key is refused at its next request,
    and that request, finding it revoked, closes what its options opened and drops the proxy's client copy for it."""
    from servers import InstantUpstream, Proxy

    upstream = InstantUpstream(QUICK_ANSWER)
    defaults = TenantDefaults(ledger=tmp_path / "tenants", cache=tmp_path / "cache", rate_store=tmp_path / "rates.db",
                              budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    try:
        with open_key_store(store_at("keys.db")) as store, open_key_store(store_at("keys.db")) as cli:  # a file, or a Redis both share
            key, _ = store.create("team-a", budget_usd=1.0, rpm=100)
            app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, tenants), tenants=tenants)
            with Proxy(built=app) as running:
                client = running.client(api_key=key, max_retries=0)
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
                assert _open_files_under(tmp_path / "tenants") > 0 and list(app.state.proxy._ready()._copies) == ["team-a"]
                cli.revoke("team-a")
                with pytest.raises(openai.AuthenticationError):
                    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
                opened = sum(_open_files_under(tmp_path / name) for name in ("tenants", "cache", "rates.db"))
                copies = dict(app.state.proxy._ready()._copies)
        assert opened == 0 and copies == {}
    finally:
        tenants.close()
        upstream.close()



def test_the_status_page_lets_go_of_a_key_it_lists_as_revoked_elsewhere(tmp_path: Path) -> None:
    from blackbox_sdk.serve._status_page import key_rows

    defaults = TenantDefaults(ledger=tmp_path / "tenants", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants = TenantOptions(defaults)
    with open_key_store(tmp_path / "keys.db", admin_key=ADMIN) as store, open_key_store(tmp_path / "keys.db") as cli:
        key, _ = store.create("team-a", budget_usd=1.0)
        app = create_app(ProxyConfig(upstream="http://127.0.0.1:9/v1", max_retries=0), authenticate=key_authenticator(store, tenants), keys=store, tenants=tenants)
        tenant = app.state.proxy.authenticate(key)  # what a request of the key builds: its ledger opened
        assert tenant is not None and tenant.release is not None and _open_files_under(tmp_path / "tenants") > 0
        tenant.release()  # the request answered
        cli.revoke("team-a")
        assert key_rows(app.state.proxy) == [] and _open_files_under(tmp_path / "tenants") == 0
    tenants.close()


def test_a_key_revoked_elsewhere_and_never_presented_again_has_its_stores_closed_by_a_later_sweep(
    tmp_path: Path, store_at: Callable[[str], str]
) -> None:
    """Revoked by another process and never presented again, a key's options were kept open for the proxy's life. The
    authenticator now lists the store now and then (at most once a `sweep_every_s`, by its clock) as other keys come
    in, and lets go of what it built for keys listed revoked: not before the interval has passed, then at once."""
    from servers import InstantUpstream, Proxy

    upstream = InstantUpstream(QUICK_ANSWER)
    defaults = TenantDefaults(ledger=tmp_path / "tenants", rate_store=tmp_path / "rates.db", budget_options={"prices": {MODEL: {"input": 1.0, "output": 1.0}}})
    tenants, now = TenantOptions(defaults), [0.0]
    try:
        with open_key_store(store_at("keys.db")) as store, open_key_store(store_at("keys.db")) as cli:  # a file, or a Redis both share
            revoked, _ = store.create("team-a", budget_usd=1.0, rpm=100)
            other, _ = store.create("team-b")
            authenticate = key_authenticator(store, tenants, sweep_every_s=60.0, clock=lambda: now[0])
            app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=authenticate, tenants=tenants)
            with Proxy(built=app) as running:
                def ask(key: str) -> None:
                    running.client(api_key=key, max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)

                def opened() -> int:
                    return sum(_open_files_under(tmp_path / name) for name in ("tenants", "rates.db"))

                ask(revoked)
                cli.revoke("team-a")
                now[0] = 59.0
                ask(other)
                kept = opened(), sorted(app.state.proxy._ready()._copies)
                now[0] = 60.0
                ask(other)
                swept = opened(), sorted(app.state.proxy._ready()._copies)
        assert kept[0] > 0 and kept[1] == ["team-a", "team-b"]  # within the interval: no sweep yet
        assert swept == (0, ["team-b"])
    finally:
        tenants.close()
        upstream.close()


def test_serving_on_a_key_store_with_no_live_key_warns_that_every_request_is_refused(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        warn_without_live_keys(store, "keys.db")
        assert [r.getMessage() for r in caplog.records if "holds no live key" in r.getMessage()], caplog.text
        caplog.clear()
        _, record = store.create("team-a")
        warn_without_live_keys(store, "keys.db")
        assert "holds no live key" not in caplog.text
        store.revoke(record.key_id)
        warn_without_live_keys(store, "keys.db")
        assert "holds no live key" in caplog.text
