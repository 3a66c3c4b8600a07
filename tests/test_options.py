"""The SDK's options: one list of names (Options' fields), checked at the boundary, and resources
named by path opened once per client, reused by every call, closed with the client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from blackbox_sdk import AsyncOpenAI, Cache, CallLog, CallLogError, ConfigError, OpenAI, RetryPolicy, wrap
from blackbox_sdk._options import OPTION_NAMES, Opened, Options, split_options

ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "comparison"


def test_option_names_are_the_fields_of_options() -> None:
    assert OPTION_NAMES == tuple(f.name for f in dataclasses.fields(Options))
    params, overrides = split_options({"model": "m", "retry": RetryPolicy(max_retries=1), "cache": None, "temperature": 0})
    assert set(params) == {"model", "temperature"} and set(overrides) == {"retry", "cache"}


def test_every_option_is_taken_by_the_client_copy_and_wrap(tmp_path: Path) -> None:
    given = {"cache": tmp_path / "c", "log": tmp_path / "l.db", "rerank_n": 3, "beam": True, "budget_key": "team", "retry": RetryPolicy(max_retries=4)}
    client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", **given)
    assert client.options.rerank_n == 3 and client.options.budget_key == "team" and client.max_retries == 4
    assert client.copy(rerank_n=5).options.rerank_n == 5 and client.options.rerank_n == 3
    import openai

    wrapped = wrap(openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1"), **given)
    assert wrapped.options.budget_key == "team" and isinstance(wrapped.options.cache, Cache)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("rerank_n", 0, id="rerank_n"),
        pytest.param("budget_key", 7, id="budget_key"),
        pytest.param("budget_key", "", id="budget_key-empty"),
        pytest.param("budget_key", "team\ud800", id="budget_key-lone-surrogate"),
        pytest.param("retry", 3, id="retry"),
        pytest.param("log", 1.5, id="log"),
        pytest.param("reranker", 42, id="reranker"),
    ],
)
def test_bad_options_are_refused_before_anything_is_sent(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", **{name: value})


def test_unknown_option_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown SDK options"):
        Options().merge(Opened(), rerankr=None)


def test_a_path_is_opened_once_and_reused(tmp_path: Path) -> None:
    opened = Opened()
    first = Options().merge(opened, cache=tmp_path / "c", log=str(tmp_path / "l.db"), reranker=ADAPTER)
    second = Options().merge(opened, cache=str(tmp_path / "c"), log=tmp_path / "l.db", reranker=str(ADAPTER))
    assert first.cache is second.cache and first.log is second.log
    assert first.reranker.__self__ is second.reranker.__self__  # one Adapter loaded, its score method shared


@pytest.mark.parametrize("option", ["cache", "log", "reranker"])
def test_a_path_no_file_can_have_is_a_config_error_naming_the_option(option: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be a file system path"):  # a NUL byte: ValueError from realpath before
        OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", **{option: str(tmp_path / "a\x00b")})
    for opens in (Cache, CallLog):
        with pytest.raises(ConfigError, match="must be a file system path"):
            opens(tmp_path / "a\x00b")
    assert not list(tmp_path.iterdir())


def test_per_call_overrides_reuse_what_the_client_opened(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test")
    for _ in range(2):
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Is 7 larger than 3?"}], max_tokens=8, rerank_n=2,
            reranker=ADAPTER, log=tmp_path / "calls.db",
        )
    assert len(client._core.opened._items) == 2  # one adapter, one log, for both calls
    assert len(list(CallLog(tmp_path / "calls.db").calls())) == 2


def test_closing_the_client_closes_what_it_opened(tmp_path: Path) -> None:
    client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=tmp_path / "calls.db")
    log = client.options.log
    client.close()
    with pytest.raises(CallLogError, match="closed database"):
        log.stats()


async def test_closing_the_async_client_closes_what_it_opened(tmp_path: Path) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=tmp_path / "calls.db")
    log = client.options.log
    await client.close()
    with pytest.raises(CallLogError, match="closed database"):
        log.stats()


def test_a_log_passed_as_an_object_stays_open(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.db")
    OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=log).close()
    log.stats()


@pytest.mark.parametrize("typo", ["refesh", "Refresh", "ON", " off", "raed", "wirte"])
async def test_a_cache_mode_with_a_typo_is_refused_not_opened_as_a_folder(typo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache="refesh" per call (or on the client) made a cache folder named "refesh" in the working folder."""
    monkeypatch.chdir(tmp_path)
    client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0, cache=tmp_path / "c")
    aclient = AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0, cache=tmp_path / "c")
    with pytest.raises(ConfigError, match="not a cache mode.*on, read, write, refresh, off"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], cache=typo)
    with pytest.raises(ConfigError, match="not a cache mode"):
        await aclient.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], cache=typo)
    with pytest.raises(ConfigError, match="not a cache mode"):
        OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", cache=typo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    client.close()
    await aclient.close()


def test_a_folder_named_like_a_mode_opens_when_given_as_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for folder in (Path("refesh"), "./raed", "mycache", str(tmp_path / "wirte")):
        client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", cache=folder)
        assert isinstance(client.options.cache, Cache)
        client.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mycache", "raed", "refesh", "wirte"]
