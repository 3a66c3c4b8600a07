#!/usr/bin/env bash
# curl against `blackbox-sdk serve`: a whole answer with the x-blackbox-* headers, then a stream as
# raw server-sent events (`data: {...}` lines, then `data: [DONE]`).
#   PROXY_URL=http://127.0.0.1:8000/v1 PROXY_KEY=bb-... bash examples/proxy_curl.sh
set -euo pipefail
url="${PROXY_URL:-http://127.0.0.1:8000/v1}"
auth=(-H "Authorization: Bearer ${PROXY_KEY:-none}")
body='{"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}'
curl -sS -D - "${auth[@]}" -H "Content-Type: application/json" -d "$body" "$url/chat/completions" | grep -iE '^x-blackbox|^\{'
echo
curl -sS -N "${auth[@]}" -H "Content-Type: application/json" -d "${body%\}}, \"stream\": true}" "$url/chat/completions"
