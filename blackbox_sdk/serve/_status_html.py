"""The status page's HTML, written on the server with every value escaped: no script, no build step."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from ._svg import line_chart

MAX_CANDIDATE_CHARS = 240
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.name,td.key,td.when,td.used{white-space:nowrap}
.bar{background:#eee;width:120px;height:10px;display:inline-block}.bar span{background:#2563eb;height:10px;display:block}
.bar span.over{background:#dc2626}.problem{color:#b45309}.error{color:#dc2626}
ol.candidates{margin:0;padding-left:20px}li.chosen{font-weight:600}.score{color:#555;font-variant-numeric:tabular-nums}
"""


def _usd(value: float | None) -> str:
    """An amount of USD, or a dash."""
    return "—" if value is None else f"{value:.6f}"


def _rate(hits: float, misses: float) -> str:
    """A hit rate in percent, or a dash when nothing was looked up."""
    return "—" if hits + misses == 0 else f"{100 * hits / (hits + misses):.1f}%"


def _bar(spent: float | None, limit: float | None) -> str:
    """How much of a cap is used, as a bar and a percentage."""
    if spent is None or not limit:
        return ""
    share = spent / limit
    width = min(share, 1.0) * 100
    over = ' class="over"' if share >= 1 else ""
    return f'<span class="bar" title="{share:.1%}"><span{over} style="width:{width:.1f}%"></span></span> <span class="used">{share:.1%}</span>'


def _key_rows(rows: list[Any]) -> str:
    """The spend table's rows."""
    lines = []
    for row in rows:
        spent = row.spent_usd if row.spent_usd is not None else row.tally.spend_usd
        name = escape(row.name) if row.name else "(the proxy: no keys)"
        lines.append(
            f'<tr class="key" data-key="{escape(row.name)}"><td class="name">{name}</td>'
            f'<td class="num spent">{_usd(spent)}</td><td class="num budget">{_usd(row.budget_usd)}</td>'
            f'<td class="used">{_bar(spent, row.budget_usd)}</td><td class="num today">{_usd(row.spent_today_usd)}</td>'
            f'<td class="num per-day">{_usd(row.per_day_usd)}</td><td class="used">{_bar(row.spent_today_usd, row.per_day_usd)}</td>'
            f'<td class="num requests">{row.tally.requests:g}</td><td class="num errors">{row.tally.errors:g}</td>'
            f'<td class="num hit-rate">{_rate(row.tally.cache_hits, row.tally.cache_misses)}</td></tr>'
        )
    return "".join(lines)


def _candidates(record: Any) -> str:
    """A call's candidates in sampling order, the chosen one marked, each with its score."""
    items = []
    for index, text in enumerate(record.candidates):
        chosen = " chosen" if record.chosen and record.chosen[0] == index else ""
        score = "" if record.scores is None else f'<span class="score">{record.scores[index]:.4f}</span> '
        shown = text if len(text) <= MAX_CANDIDATE_CHARS else text[:MAX_CANDIDATE_CHARS] + "…"
        items.append(f'<li class="candidate{chosen}" value="{index}">{score}<span class="text">{escape(shown)}</span></li>')
    return f'<ol class="candidates" start="0">{"".join(items)}</ol>' if items else ""


def _call_rows(calls: list[Any]) -> str:
    """The latest calls' rows, newest first."""
    lines = []
    for record in calls:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        error = f'<span class="error">{escape(record.error)}</span>' if record.error else ""
        lines.append(
            f'<tr class="call" data-call-id="{escape(record.call_id)}"><td class="when">{when}</td><td class="key">{escape(record.key or "")}</td>'
            f'<td>{escape(record.model)}</td><td>{escape(record.route)}</td><td class="cache">{"hit" if record.cache_hit else ""}</td>'
            f'<td class="num cost">{record.cost_usd:.6f}</td><td>{_candidates(record)}{error}</td></tr>'
        )
    return "".join(lines)


def _chart(timeline: list[tuple[int, int, int]]) -> str:
    """Requests and errors per minute."""
    labels = [time.strftime("%H:%M", time.gmtime(start)) for start, _, _ in timeline]
    series = {"requests": [float(n) for _, n, _ in timeline], "errors": [float(e) for _, _, e in timeline]}
    return line_chart("Requests and errors per minute (UTC)", labels, series)


def status_page(data: Any) -> str:
    """The whole page."""
    requests = sum(row.tally.requests for row in data.keys)
    errors = sum(row.tally.errors for row in data.keys)
    hits = sum(row.tally.cache_hits for row in data.keys)
    misses = sum(row.tally.cache_misses for row in data.keys)
    problems = "".join(f'<p class="problem">{escape(problem)}</p>' for problem in data.problems)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blackbox-sdk proxy</title>'
        f"<style>{STYLE}</style></head><body><h1>blackbox-sdk proxy</h1>"
        f'<p id="summary">upstream <b>{"ready" if data.ready else "not ready"}</b> · requests <b id="requests">{requests:g}</b>'
        f' · errors <b id="errors">{errors:g}</b> · cache hit rate <b id="hit-rate">{_rate(hits, misses)}</b> (since this process started)</p>'
        f"{problems}<h2>Spend per key</h2>"
        '<table id="keys"><tr><th>key</th><th class="num">spent (USD)</th><th class="num">budget (USD)</th><th>used</th>'
        '<th class="num">today (USD)</th><th class="num">per day (USD)</th><th>used today</th><th class="num">requests</th>'
        f'<th class="num">errors</th><th class="num">cache hit rate</th></tr>{_key_rows(data.keys)}</table>'
        f"<h2>Requests and errors per minute</h2>{_chart(data.timeline)}"
        '<h2>Latest calls</h2><table id="calls"><tr><th>time (UTC)</th><th>key</th><th>model</th><th>route</th><th>cache</th>'
        f'<th class="num">cost (USD)</th><th>candidates (reranker score; chosen in bold)</th></tr>{_call_rows(data.calls)}</table>'
        '<form method="post" action="/logout"><button>log out</button></form></body></html>'
    )


def login_page(message: str | None, *, can_log_in: bool) -> str:
    """The login form (or, without a key store, why there is none)."""
    note = f'<p class="problem">{escape(message)}</p>' if message else ""
    form = (
        '<form method="post" action="/login"><label>Admin key <input type="password" name="key" autocomplete="current-password" required></label>'
        " <button>log in</button></form>"
        if can_log_in
        else "<p>This proxy has no key store, so no admin key: open this page from the proxy's own machine.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blackbox-sdk proxy: log in</title>'
        f"<style>{STYLE}</style></head><body><h1>blackbox-sdk proxy</h1>{note}{form}</body></html>"
    )
