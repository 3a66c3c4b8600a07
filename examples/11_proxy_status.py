"""Operating the proxy: Prometheus metrics at /metrics and the admin's status page at /.

The proxy runs here in this process on the embedded local model, with a cache, a call log, a
priced budget and a reranker adapter (three candidates a call, scored). After a few calls (one a
cache hit, one refused) it prints parts of /metrics and writes the status page to an HTML file.
Without tenant keys both pages answer only this machine; with keys they need the admin key
(docs/proxy-operations.md):

    curl -s http://127.0.0.1:8000/metrics -H "Authorization: Bearer $BLACKBOX_ADMIN_KEY"
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx2
import uvicorn

from blackbox_sdk.local import free_port
from blackbox_sdk.serve import ProxyConfig, create_app

ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "comparison"
folder = Path(tempfile.mkdtemp(prefix="bb-proxy-status-"))
config = ProxyConfig(
    cache=str(folder / "cache"),
    log=str(folder / "calls.db"),
    budget={"total_usd": 1.0, "prices": {"smollm2": {"input": 1000.0, "output": 1000.0}}},  # cents a call, so spend shows
    reranker=str(ADAPTER),
    rerank_n=3,
)
port = free_port()
url = f"http://127.0.0.1:{port}"
server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
deadline = time.monotonic() + 300
while time.monotonic() < deadline:  # /readyz answers 200 once the model and the reranker are loaded
    try:
        if httpx2.get(f"{url}/readyz").status_code == 200:
            break
    except httpx2.TransportError:
        pass
    time.sleep(0.1)

chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Which number is larger, 24 or 57?"}], "max_tokens": 12, "temperature": 0.8}
for attempt in ("first call", "same call (cache)"):
    answer = httpx2.post(f"{url}/v1/chat/completions", json=chat, timeout=300)
    print(f"{attempt}: {answer.json()['choices'][0]['message']['content']!r}  cache hit: {answer.headers['x-blackbox-cache-hit']}")
refused = httpx2.post(f"{url}/v1/chat/completions", json={**chat, "n": 0}, timeout=60)
print("a bad request:", refused.status_code, refused.json()["error"]["message"])

metrics = httpx2.get(f"{url}/metrics").text  # this machine: no key needed without tenant keys
wanted = ("blackbox_proxy_requests_total", "blackbox_proxy_spend_usd_total", "blackbox_proxy_cache_lookups_total", "blackbox_proxy_reranker_picks_total")
print("\n/metrics (excerpt):")
print("\n".join(line for line in metrics.splitlines() if line.startswith(wanted)))

page = folder / "status.html"
page.write_text(httpx2.get(f"{url}/").text)
print(f"\nthe status page: {page} (open it in a browser)")

server.should_exit = True
thread.join()
