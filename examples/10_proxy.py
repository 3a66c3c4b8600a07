"""The OpenAI-compatible proxy (`blackbox-sdk serve`): any OpenAI client, in any language, gets the
cache, budgets and the call log by changing its base URL.

Here the proxy runs in this process on the embedded local model (no API key needed) and the
openai package's own client calls it. From a shell the same proxy is:

    blackbox-sdk serve --cache proxy-cache --log proxy-calls.db --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx2
import openai
import uvicorn

from blackbox_sdk import CallLog
from blackbox_sdk.local import free_port
from blackbox_sdk.serve import ProxyConfig, create_app

folder = Path(tempfile.mkdtemp(prefix="bb-proxy-"))
config = ProxyConfig(cache=str(folder / "cache"), log=str(folder / "calls.db"))  # no upstream: the embedded model
port = free_port()
server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:  # /readyz answers 200 once the model is loaded
    try:
        if httpx2.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
            break
    except httpx2.TransportError:
        pass
    time.sleep(0.1)

client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")  # openai's own client, only base_url changed
question = [{"role": "user", "content": "What is the capital of France?"}]
for attempt in ("first call", "same call again"):
    raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=question, max_tokens=12, temperature=0)
    answer = raw.parse().choices[0].message.content
    print(f"{attempt}: {answer!r}")
    for name in ("x-blackbox-call-id", "x-blackbox-cache-hit", "x-blackbox-cost-usd"):
        print(f"  {name}: {raw.headers[name]}")

print("streamed:", "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True) if c.choices))
response = client.responses.create(model="smollm2", input="Name a colour.", max_output_tokens=16, temperature=0)
print("responses API:", repr(response.output_text))
feedback = httpx2.post(f"http://127.0.0.1:{port}/v1/feedback", json={"call_id": raw.headers["x-blackbox-call-id"], "label": "correct"})
print("feedback:", feedback.json())

server.should_exit = True  # as SIGTERM does: in-flight requests finish, then the client closes
thread.join()
log = CallLog(folder / "calls.db")
print(f"the call log holds {len(list(log.calls()))} calls and {len(log.feedback_for(raw.headers['x-blackbox-call-id']))} feedback")
