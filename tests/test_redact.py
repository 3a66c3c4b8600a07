"""Secret redaction: credential-named keys, key-shaped strings, and the logging filter."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blackbox_sdk._logging import LOG_ENV, logger
from blackbox_sdk._redact import REDACTED, SecretFilter, is_secret_key, mask_secret, redact, redact_text

OPENAI_KEY = "sk-proj-" + "A1b2C3d4" * 6
REPO_ROOT = Path(__file__).resolve().parents[1]
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature"
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJhdWQiOiJhcGkiLCJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("api_key", id="api_key"),
        pytest.param("Authorization", id="authorization-capitalised"),
        pytest.param("proxy-authorization", id="proxy-authorization"),
        pytest.param("X-API-Key", id="x-api-key-mixed-case"),
        pytest.param("OPENAI_API_KEY", id="openai-api-key-env-style"),
        pytest.param("openai-api-key", id="openai-api-key-header-style"),
        pytest.param("password", id="password"),
        pytest.param("secret", id="secret"),
        pytest.param("client_secret", id="client-secret"),
        pytest.param("token", id="token"),
        pytest.param("access_token", id="access-token"),
        pytest.param("azure_api_key", id="prefixed-api-key"),
        pytest.param("Ocp-Apim-Subscription-Key", id="azure-subscription-header"),
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("max_tokens", id="max_tokens"),
        pytest.param("prompt_tokens", id="prompt_tokens"),
        pytest.param("completion_tokens", id="completion_tokens"),
        pytest.param("max_completion_tokens", id="max_completion_tokens"),
        pytest.param("total_tokens", id="total_tokens"),
        pytest.param("prompt_cache_key", id="prompt_cache_key"),
        pytest.param("model", id="model"),
        pytest.param("messages", id="messages"),
    ],
)
def test_count_and_request_names_are_not_secret(name: str) -> None:
    assert not is_secret_key(name)


def test_redact_replaces_credential_values_at_any_depth_and_keeps_the_rest() -> None:
    request = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "api_key": "plain-value-without-a-key-shape",
        "extra_headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Trace": "abc"},
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "nested": [{"password": {"deep": 1}}],
    }
    out = redact(request)
    assert out == {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "api_key": REDACTED,
        "extra_headers": {"Authorization": REDACTED, "X-Trace": "abc"},
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "nested": [{"password": REDACTED}],
    }


def test_redact_returns_a_copy_and_leaves_the_input_unchanged() -> None:
    request = {"api_key": "x", "messages": [{"role": "user", "content": OPENAI_KEY}]}
    out = redact(request)
    out["messages"][0]["role"] = "changed"
    assert request == {"api_key": "x", "messages": [{"role": "user", "content": OPENAI_KEY}]}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"my key is {OPENAI_KEY}, please use it", id="openai-key-in-prose"),
        pytest.param(f"header {BEARER}", id="bearer-token"),
        pytest.param("hf_" + "a" * 34, id="huggingface-token"),
        pytest.param("ghp_" + "B" * 36, id="github-token"),
        pytest.param("AKIAIOSFODNN7EXAMPLE", id="aws-access-key-id"),
        pytest.param("use AIza" + "Sy0-x_Z" * 5 + " for Gemini", id="google-api-key"),
        pytest.param(f"token {JWT} expired", id="jwt-access-token"),
    ],
)
def test_key_shaped_substrings_are_replaced_inside_strings(text: str) -> None:
    out = redact_text(text)
    assert REDACTED in out
    assert not any(secret in out for secret in (OPENAI_KEY, BEARER.split()[1], "a" * 34, "B" * 36, "IOSFODNN7", JWT.split(".")[1]))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("the task-force met on sk-day", id="sk-inside-words"),
        pytest.param("Bearer", id="bare-bearer-word"),
        pytest.param("max_tokens=256 and prompt_tokens=12", id="token-counts"),
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_secret_filter_redacts_arguments_message_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="blackbox_sdk")
    try:
        raise RuntimeError(f"server said {BEARER}")
    except RuntimeError:
        logger.exception("call with %s and %s", {"api_key": "plain-secret", "max_tokens": 5}, OPENAI_KEY)
    record = caplog.records[-1]
    text = caplog.text
    assert "plain-secret" not in text and OPENAI_KEY not in text and BEARER not in text
    assert "'max_tokens': 5" in record.getMessage()
    assert REDACTED in (record.exc_text or "")


def test_secret_filter_never_drops_records() -> None:
    record = logging.LogRecord("blackbox_sdk", logging.INFO, __file__, 1, "plain %d", (3,), None)
    assert SecretFilter().filter(record) is True
    assert record.getMessage() == "plain 3"


def test_sdk_logger_prints_nothing_unless_blackbox_log_is_set() -> None:
    script = (
        "from blackbox_sdk._logging import logger, setup_logging\n"
        "setup_logging()\n"
        f"logger.info('call with %s', {OPENAI_KEY!r})\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), check=True)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(**{LOG_ENV: "info"}), check=True)
    assert quiet.stderr == ""
    assert "call with [REDACTED]" in loud.stderr and OPENAI_KEY not in loud.stderr


def _env(**extra: str) -> dict[str, str]:
    """A child environment with the repository importable and no inherited SDK settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLACKBOX_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def test_a_short_key_echoed_in_a_401_body_never_reaches_the_log_or_its_export(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import httpx2
    import openai

    from blackbox_sdk import CallLog, OpenAI

    key = "k3y-short-9"  # matches no key pattern: only the client knows it is a secret

    def unauthorized(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, json={"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}})

    http = httpx2.Client(transport=httpx2.MockTransport(unauthorized))
    client = OpenAI(api_key=key, base_url="http://api.test/v1", http_client=http, log=tmp_path / "calls.db", max_retries=0)
    caplog.set_level(logging.DEBUG, logger="blackbox_sdk")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"my key is {key}"}])
    client.close()
    log = CallLog(tmp_path / "calls.db")
    [record] = list(log.calls())
    assert record.error is not None and "Incorrect API key" in record.error
    log.export_jsonl(tmp_path / "out.jsonl")
    for text in (record.model_dump_json(), (tmp_path / "out.jsonl").read_text(), caplog.text):
        assert key not in text
    assert REDACTED in record.error


def test_each_key_a_key_provider_hands_out_stays_out_of_the_log(tmp_path: Path) -> None:
    """openai's clients take a callable `api_key` (an Entra ID or vault token provider) and refresh it per request: each
    key it hands out is the client's actual key, redacted like a fixed one, whatever its shape."""
    import httpx2
    import openai

    from blackbox_sdk import CallLog, OpenAI

    handed: list[str] = []

    def provider() -> str:
        handed.append(f"vault-tok-{len(handed)}")  # matches no key pattern
        return handed[-1]

    def echo(request: httpx2.Request) -> httpx2.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return httpx2.Response(401, json={"error": {"message": f"token {token} has expired", "type": "invalid_request_error"}})

    http = httpx2.Client(transport=httpx2.MockTransport(echo))
    with OpenAI(api_key=provider, base_url="http://api.test/v1", http_client=http, log=tmp_path / "calls.db", max_retries=0) as client:
        for _ in range(2):
            with pytest.raises(openai.AuthenticationError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    records = list(CallLog(tmp_path / "calls.db").calls())
    assert len(handed) >= 2 and [REDACTED in (r.error or "") for r in records] == [True, True]
    assert not any(token in r.model_dump_json() for token in handed for r in records)


def test_the_proxys_tenant_keys_are_redacted_and_call_ids_are_not() -> None:
    from blackbox_sdk._redact import redact_text

    key = "bb-" + "Ab3_-" * 9  # the shape `blackbox-sdk keys create` prints
    assert redact_text(f"key {key} call bb-1a237ec71c4-4896817aded14855") == "key [REDACTED] call bb-1a237ec71c4-4896817aded14855"


def test_a_password_in_the_base_url_stays_out_of_the_clients_repr() -> None:
    from blackbox_sdk import OpenAI

    client = OpenAI(base_url="http://bob:hunter2@127.0.0.1:9/v1", api_key="sk-test")
    shown = repr(client)
    assert "hunter2" not in shown and "bob:***@127.0.0.1:9" in shown
    client.close()


def test_a_password_of_eight_characters_or_more_is_masked_inside_a_word_too_a_short_one_only_as_a_word() -> None:
    assert mask_secret("auth failed for xHunter2Pass!y", "Hunter2Pass!") == "auth failed for x***y"
    assert mask_secret("connection failed: bad password a", "a") == "connection failed: bad password ***"
    assert mask_secret("Hunter2 in xHunter2x", "Hunter2") == "*** in xHunter2x"


def test_the_shortest_texts_each_rule_redacts_are_redacted_and_shorter_ones_kept() -> None:
    """Texts too short for either rule are returned unsearched (a speed-up on every logged record): the bounds hold."""
    from blackbox_sdk._redact import MIN_REMEMBERED_SECRET, SHORTEST_SHAPED, remember_secret

    shortest = "Bearer abcdefgh"
    assert len(shortest) == SHORTEST_SHAPED and redact_text(shortest) == REDACTED
    assert redact_text(shortest[:-1]) == shortest[:-1]
    secret = "q7Zx!p"  # a short custom key, shaped like nothing
    assert len(secret) == MIN_REMEMBERED_SECRET
    remember_secret(secret)
    assert redact_text(secret) == REDACTED and redact_text(f"[{secret}]") == f"[{REDACTED}]"
    assert redact({"role": "user", "content": secret}) == {"role": "user", "content": REDACTED}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("can't connect to postgresql://app:hunter2-pass@db.internal:5432/calls: timeout",
                     "can't connect to postgresql://app:***@db.internal:5432/calls: timeout", id="postgres-url-in-an-error"),
        pytest.param("use redis://:s3cr3t@cache:6379/0 and POSTGRES://u:p%40ss@h/d", "use redis://:***@cache:6379/0 and POSTGRES://u:***@h/d", id="two-urls"),
        pytest.param("redis://:pw@h", "redis://:***@h", id="shorter-than-a-key-shape"),
        pytest.param("db at postgresql://app:***@db/calls", "db at postgresql://app:***@db/calls", id="already-shown-as-the-sdk-shows-it"),
        pytest.param(f"postgresql://u:{OPENAI_KEY}@h/d", "postgresql://u:***@h/d", id="a-key-as-the-password"),
    ],
)
def test_a_password_in_a_url_in_free_text_is_masked_and_the_rest_kept(text: str, shown: str) -> None:
    """Issue: ``scheme://user:SECRET@`` pasted into a prompt or echoed in an upstream error was logged as written."""
    assert redact_text(text) == shown
    assert redact_text(shown) == shown  # idempotent: the SDK's own ``:***@`` stays as it is
    assert redact({"messages": [{"role": "user", "content": text}]}) == {"messages": [{"role": "user", "content": shown}]}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("http://localhost:8080/v1/chat", id="a-port"),
        pytest.param("mail me at ann@example.com, see https://example.com/a@b", id="no-password"),
        pytest.param("http://[::1]:8080/x@y", id="ipv6-host"),
        pytest.param("ratio 3:2@noon", id="no-scheme"),
    ],
)
def test_urls_without_a_password_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_a_url_password_stays_out_of_the_call_log_and_the_sdks_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from blackbox_sdk.call_log import CallLog, CallRecord

    url = "postgresql://app:Pw-in-a-prompt-77@db.internal/calls"
    record = CallRecord(
        endpoint_host="api.openai.com", model="m", route="chat", request={"messages": [{"role": "user", "content": f"why does {url} fail?"}]},
        candidates=["it is down"], chosen=[0], error=f"APIError: upstream said {url} refused", extra={"note": url},
    )
    with CallLog(tmp_path / "calls.db") as log:
        log.record(record)
        stored = log.get(record.call_id)
    assert "Pw-in-a-prompt-77" not in str(stored.model_dump()) and "postgresql://app:***@db.internal/calls" in str(stored.request)
    assert all(b"Pw-in-a-prompt-77" not in path.read_bytes() for path in tmp_path.iterdir())
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.warning("upstream error: %s", url)
    assert "Pw-in-a-prompt-77" not in caplog.text and "postgresql://app:***@db.internal/calls" in caplog.text
