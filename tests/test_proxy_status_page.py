"""The admin's status page at /, rendered by a real headless Chromium (Debian's `chromium`): the
proxy runs under uvicorn in front of the real llama.cpp server with a reranker adapter, takes a few
calls (a reranked one, its cache hit, a budget refusal), and the browser logs in with the admin key
through the page's own form; the test asserts on the DOM Chromium rendered and keeps its screenshot."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from servers import Proxy

from blackbox_sdk import Budget, CallLog
from blackbox_sdk.call_log import CallRecord
from blackbox_sdk.serve import (
    ProxyConfig,
    TenantDefaults,
    TenantOptions,
    admin_routes,
    create_app,
    key_authenticator,
    open_key_store,
)
from blackbox_sdk.serve._metrics import KeyTally
from blackbox_sdk.serve._status_html import status_page
from blackbox_sdk.serve._status_page import KeyRow, StatusData

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}
ADMIN = "admin-key-for-the-status-page-0123456789"
QUESTION = [{"role": "user", "content": "Which number is larger, 24 or 57?"}]
CHROMIUM = shutil.which("chromium")
ARTIFACTS = os.environ.get("BLACKBOX_TEST_ARTIFACTS")  # read at import: conftest's clean_env drops BLACKBOX_* for each test


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a profile of this test's own; its stdout."""
    assert CHROMIUM is not None, "Debian's chromium is needed (scripts/setup.sh installs it)"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=10000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def login_file(tmp_path: Path, url: str) -> str:
    """A local page that submits the proxy's own login form with the admin key, as a person would."""
    page = tmp_path / "login.html"
    page.write_text(
        f'<form method="post" action="{url}/login"><input name="key" value="{ADMIN}"></form><script>document.forms[0].submit()</script>'
    )
    return page.as_uri()


def keep(screenshot: Path) -> None:
    """Copy the screenshot to $BLACKBOX_TEST_ARTIFACTS when it is set."""
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(ARTIFACTS) / "proxy-status-page.png")


@pytest.fixture
def calls_made(llama_server: str, tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    """The proxy (keys with an admin key, a reranker for team-a, a cache and a log) after a few real calls."""
    store = open_key_store(tmp_path / "keys.db", admin_key=ADMIN)
    tenants = TenantOptions(TenantDefaults(ledger=tmp_path / "tenants", cache=tmp_path / "cache", budget_options={"prices": PRICES}))
    config = ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"), rerank_n=3)
    app = create_app(config, authenticate=key_authenticator(store, tenants), routes=admin_routes(store), keys=store, tenants=tenants)
    team_a, _ = store.create("team-a", budget_usd=5.0, per_day_usd=2.0, reranker="adapters/comparison")
    team_b, _ = store.create("team-b", per_day_usd=1e-6)
    with Proxy(built=app) as served:
        chat = {"model": MODEL, "messages": QUESTION, "max_tokens": 12, "temperature": 0.8, "seed": 7}
        for _ in range(2):  # the second is the first's cache hit
            answer = httpx2.post(f"{served.url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {team_a}"}, timeout=120)
            assert answer.status_code == 200, answer.text
        assert answer.headers["x-blackbox-cache-hit"] == "true"
        refused = httpx2.post(f"{served.url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {team_b}"}, timeout=60)
        assert refused.status_code == 429  # team-b's budget
        yield served, tmp_path
    tenants.close()
    store.close()


def test_the_status_page_in_headless_chromium(calls_made: tuple[Proxy, Path]) -> None:
    served, folder = calls_made
    assert httpx2.get(f"{served.url}/").status_code == 401  # no admin key, no page
    login = login_file(folder, served.url)
    dom = chromium(folder, "--dump-dom", login)
    screenshot = folder / "status-page.png"
    chromium(folder, f"--screenshot={screenshot}", "--window-size=1280,1400", login)
    keep(screenshot)

    assert "<h1>blackbox-sdk proxy</h1>" in dom and "<script" not in dom  # the proxy's page, no script
    spent = Budget(prices=PRICES, ledger=folder / "tenants" / "team-a.sqlite3").spent()
    row_a = re.search(r'<tr class="key" data-key="team-a">(.*?)</tr>', dom)
    assert row_a and f'<td class="num spent">{spent:.6f}</td>' in row_a.group(1) and spent > 0
    assert '<td class="num budget">5.000000</td>' in row_a.group(1) and '<td class="num hit-rate">50.0%</td>' in row_a.group(1)
    row_b = re.search(r'<tr class="key" data-key="team-b">(.*?)</tr>', dom)
    assert row_b and '<td class="num errors">1</td>' in row_b.group(1) and '<td class="num per-day">0.000001</td>' in row_b.group(1)
    chart = re.search(r'<svg class="chart".*?</svg>', dom, re.DOTALL)
    assert chart and chart.group(0).count('<circle class="point"') == 120  # requests and errors, a point a minute
    assert re.search(r'<polyline[^>]*data-series="requests"', chart.group(0))

    logged = sorted(CallLog(folder / "calls.db").calls(), key=lambda record: (record.created, record.call_id), reverse=True)
    rows = re.findall(r'<tr class="call" data-call-id="([^"]+)">(.*?)</tr>', dom, re.DOTALL)
    assert [call_id for call_id, _ in rows] == [record.call_id for record in logged]  # newest first, every logged call
    reranked = next(record for record in logged if record.scores and not record.cache_hit)
    shown = dict(rows)[reranked.call_id]
    texts = [html.unescape(text) for text in re.findall(r'<span class="text">(.*?)</span>', shown, re.DOTALL)]
    assert texts == [text[:240] + ("…" if len(text) > 240 else "") for text in reranked.candidates] and len(texts) == 3
    scores = [float(score) for score in re.findall(r'<span class="score">([-\d.]+)</span>', shown)]
    assert scores == pytest.approx(reranked.scores, abs=1e-4)
    assert f'<li class="candidate chosen" value="{reranked.chosen[0]}">' in shown

    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a rendered page, not a blank one


def test_every_value_on_the_page_is_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    record = CallRecord(endpoint_host="h", model=hostile, route="chat", request={}, candidates=[hostile, "b & c"], chosen=[1],
                        scores=[0.1, 0.9], key=hostile, error=hostile)
    data = StatusData(keys=[KeyRow("team-<a>", 1.0, None, 0.5, 0.1, KeyTally(requests=2, cache_hits=1, cache_misses=1))],
                      timeline=[(0, 1, 0), (60, 2, 1)], calls=[record], ready=True, problems=[hostile])
    page = status_page(data)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "b &amp; c" in page
    assert 'data-key="team-&lt;a&gt;"' in page and "50.0%" in page
