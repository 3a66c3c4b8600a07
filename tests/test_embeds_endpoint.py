"""EmbedsEndpoint against a double of vLLM's prompt-embeds wire format, backed by the real local SmolLM2.

No server that takes prompt embeddings runs here, so the double stands in for one: it decodes each
`prompt_embeds` item (base64 of torch.save, loaded with weights_only=True), runs the real model on
it, and answers with the first generated token's top-k log-probs as vLLM's /v1/completions does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
import torch

from blackbox_sdk._exceptions import BackendError, ConfigError, EmbeddingsNotSupportedError, TuningError
from blackbox_sdk.local._backend import HFBackend, load_backend
from blackbox_sdk.tuning import BBTConfig, EmbedsEndpoint, LocalScorer, PromptTemplate, Tuner, decode_embeds, encode_embeds
from blackbox_sdk.tuning._embeds_endpoint import missing_logprob

TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TEXTS = ["A warm and funny film, I loved it.", "The battery died in an hour, awful."]
SERVER_MAX_LOGPROBS = 20


class VLLMDouble:
    """Answers POST /v1/completions with prompt_embeds the way vLLM does, using the real local model."""

    def __init__(self, backend: HFBackend, *, status: int = 200, answers_token_ids: bool = True) -> None:
        self.backend = backend
        self.status = status
        self.answers_token_ids = answers_token_ids  # False: an older server that ignores logprob_token_ids
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx2.Headers] = []
        self.answered: list[dict[str, float]] = []  # each choice's first-token top_logprobs, in order

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        """Route one request: only /v1/completions exists."""
        if request.url.path != "/v1/completions":
            return httpx2.Response(404, json={"error": {"message": "not found"}})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        if self.status != 200:
            return httpx2.Response(self.status, json={"error": {"message": "engine overloaded"}})
        if body.get("prompt") == "":
            return httpx2.Response(400, json={"error": {"message": "The decoder prompt cannot be empty"}})
        if body.get("echo") or body.get("prompt_logprobs"):
            return httpx2.Response(
                400, json={"error": {"message": "echo and prompt_logprobs are not supported with prompt embeds"}}
            )
        items = body["prompt_embeds"] if isinstance(body["prompt_embeds"], list) else [body["prompt_embeds"]]
        tensors = [decode_embeds(item) for item in items]
        choices = [self._choice(i, tensor, body) for i, tensor in enumerate(tensors)]
        positions = sum(int(t.shape[0]) for t in tensors)
        usage = {"prompt_tokens": positions, "completion_tokens": len(items), "total_tokens": positions + len(items)}
        return httpx2.Response(
            200,
            json={"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices, "usage": usage},
        )

    def _choice(self, index: int, embeds: torch.Tensor, body: dict[str, Any]) -> dict[str, Any]:
        """One greedy token with its top-k log-probs (or those of logprob_token_ids), keyed by token id or text."""
        assert embeds.ndim == 2 and embeds.shape[1] == 576
        logits = self.backend.forward_embeds(embeds[None].float(), torch.ones(1, embeds.shape[0], dtype=torch.long))
        logprobs = torch.log_softmax(logits[0, -1], dim=-1)
        values, ids = torch.topk(logprobs, min(body["logprobs"], SERVER_MAX_LOGPROBS))
        if self.answers_token_ids and body.get("logprob_token_ids"):  # vLLM: the sampled token, then those asked for
            ids = torch.tensor([int(ids[0]), *body["logprob_token_ids"]])
            values = logprobs[ids]
        as_ids = body.get("return_tokens_as_token_ids")
        key = (lambda t: f"token_id:{t}") if as_ids else (lambda t: self.backend.tokenizer.decode([t]))
        top = {key(int(t)): float(v) for v, t in zip(values, ids, strict=True)}
        first = int(ids[0])
        self.answered.append(top)
        return {
            "index": index,
            "text": self.backend.tokenizer.decode([first]),
            "finish_reason": "length",
            "logprobs": {
                "tokens": [key(first)],
                "token_logprobs": [float(values[0])],
                "top_logprobs": [top],
                "text_offset": [0],
            },
        }


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> HFBackend:
    """The process-wide local backend for the packaged SmolLM2."""
    torch.set_num_threads(2)
    return load_backend(gguf_path)


def endpoint(backend: HFBackend, double: VLLMDouble, **options: Any) -> EmbedsEndpoint:
    """An EmbedsEndpoint talking to the double."""
    settings: dict[str, Any] = {"supports_prompt_embeds": True, **options}
    return EmbedsEndpoint(
        "http://vllm.test/v1",
        model="smollm2",
        embedding_table_source=backend,
        http_client=httpx2.Client(transport=httpx2.MockTransport(double)),
        **settings,
    )


def test_without_the_capability_switch_nothing_is_sent(backend: HFBackend) -> None:
    double = VLLMDouble(backend)
    off = endpoint(backend, double, supports_prompt_embeds=False)
    with pytest.raises(EmbeddingsNotSupportedError):
        Tuner(
            off,
            template=TEMPLATE,
            verbalizer=VERBALIZER,
            train=[(TEXTS[0], "positive"), (TEXTS[1], "negative")],
            config=BBTConfig(d=4, prompt_len=1, popsize=4, budget=4),
        )
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    with pytest.raises(EmbeddingsNotSupportedError):
        off.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)
    assert double.bodies == []


def test_endpoint_scores_match_the_local_model_for_labels_in_the_top_k(backend: HFBackend) -> None:
    double = VLLMDouble(backend)
    remote = endpoint(backend, double, batch_size=3)
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "after_text")
    examples = template.encode(TEXTS)
    words = backend.tokenizer.encode(" Overall,", add_special_tokens=False)
    prompts = backend.input_embeddings().weight.detach()[torch.tensor(words)].float()[None].repeat(2, 1, 1)  # [2, L, H]
    prompts[1] += 0.01
    local = LocalScorer(backend).label_logprobs(prompts, examples, template.label_token_ids).reshape(4, 2)
    remote_scores = remote.label_logprobs(prompts, examples, template.label_token_ids).reshape(4, 2)
    assert [len(b["prompt_embeds"]) for b in double.bodies] == [3, 1]  # 2 prompts x 2 examples, batches of <= 3
    compared = 0
    for answered, here, there in zip(double.answered, local.tolist(), remote_scores.tolist(), strict=True):
        floor = min(answered.values())
        for label_id, mine, theirs in zip(template.label_token_ids, here, there, strict=True):
            if f"token_id:{label_id}" in answered:
                assert theirs == pytest.approx(mine, abs=1e-4)
                compared += 1
            else:  # outside the top-k: below every shown token, locally and in the stand-in
                assert mine <= floor and theirs <= floor
    assert compared >= 4


def test_labels_outside_the_top_k_get_the_documented_stand_in(backend: HFBackend) -> None:
    double = VLLMDouble(backend, answers_token_ids=False)
    remote = endpoint(backend, double, top_logprobs=1)
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    scores = remote.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS[:1]), template.label_token_ids)[0, 0]
    (shown,) = double.answered
    (top_id,) = (int(k.removeprefix("token_id:")) for k in shown)
    (top_value,) = shown.values()
    missing = [t for t in template.label_token_ids if t != top_id]
    stand_in = missing_logprob([top_value], len(missing))
    assert stand_in <= top_value
    for label_id, value in zip(template.label_token_ids, scores.tolist(), strict=True):
        assert value == pytest.approx(top_value if label_id == top_id else stand_in, abs=1e-6)


def test_decoded_token_keys_are_matched_too(backend: HFBackend) -> None:
    double = VLLMDouble(backend)
    remote = endpoint(backend, double)
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    prompts = torch.zeros(1, 1, 576)
    with_ids = remote.label_logprobs(prompts, template.encode(TEXTS), template.label_token_ids)

    def as_text(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        body["return_tokens_as_token_ids"] = False
        return double(httpx2.Request("POST", request.url, json=body))

    texts = EmbedsEndpoint(
        "http://vllm.test/v1",
        model="smollm2",
        embedding_table_source=backend,
        supports_prompt_embeds=True,
        http_client=httpx2.Client(transport=httpx2.MockTransport(as_text)),
    )
    assert torch.allclose(texts.label_logprobs(prompts, template.encode(TEXTS), template.label_token_ids), with_ids)


def test_the_wire_format_is_what_vllm_reads(backend: HFBackend) -> None:
    double = VLLMDouble(backend)
    remote = endpoint(backend, double, wire_dtype="bfloat16", api_key="sk-test")
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    examples = template.encode(TEXTS[:1])
    remote.label_logprobs(torch.zeros(1, 3, 576), examples, template.label_token_ids)
    (body,) = double.bodies
    assert "prompt" not in body and body["logprob_token_ids"] == template.label_token_ids
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["model"] == "smollm2"
    assert "echo" not in body and "prompt_logprobs" not in body
    tensor = decode_embeds(body["prompt_embeds"][0])
    assert tensor.dtype == torch.bfloat16 and tuple(tensor.shape) == (examples.tokens_per_sequence(3)[0], 576)
    assert double.headers[0]["authorization"] == "Bearer sk-test"
    assert "sk-test" not in repr(remote)


def test_server_errors_and_malformed_answers_raise_backend_errors(backend: HFBackend) -> None:
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    failing = endpoint(backend, VLLMDouble(backend, status=503))
    with pytest.raises(BackendError, match="503"):
        failing.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)
    empty = EmbedsEndpoint(
        "http://vllm.test/v1",
        model="smollm2",
        embedding_table_source=backend,
        supports_prompt_embeds=True,
        http_client=httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json={"choices": []}))),
    )
    with pytest.raises(BackendError, match="choices"):
        empty.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)


def _choices(first: dict[str, Any], *, indexes: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """A 200 answer for two sequences: the first choice's top_logprobs as given, the second plausible."""
    plain = {"token_id:1": -0.5, "token_id:2": -1.5}
    return {"choices": [{"index": i, "logprobs": {"top_logprobs": [top]}} for i, top in zip(indexes, [first, plain], strict=True)]}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"<html>gateway</html>", "no JSON", id="not-json"),
        pytest.param(json.dumps(_choices({"token_id:1": float("nan")})).encode(), "log-prob", id="nan-logprob"),
        pytest.param(json.dumps(_choices({"token_id:1": 3.0})).encode(), "log-prob", id="positive-logprob"),
        pytest.param(json.dumps(_choices({"token_id:1": "high"})).encode(), "log-prob", id="string-logprob"),
        pytest.param(json.dumps(_choices({"token_id:1": None})).encode(), "log-prob", id="null-logprob"),
        pytest.param(json.dumps(_choices({"token_id:one": -1.0})).encode(), "token key", id="bad-token-key"),
        pytest.param(json.dumps(_choices({"token_id:\u00b2": -1.0})).encode(), "token key", id="superscript-digit-token-key"),
        pytest.param(json.dumps(_choices({"token_id:1": -(10**400)})).encode(), "log-prob", id="logprob-beyond-a-float"),
        pytest.param(json.dumps(_choices({"token_id:1": -1.0}, indexes=(0, 0))).encode(), "choices", id="same-index-twice"),
    ],
)
def test_a_malformed_answer_is_a_backend_error(backend: HFBackend, content: bytes, match: str) -> None:
    answer = httpx2.MockTransport(lambda r: httpx2.Response(200, content=content))
    remote = EmbedsEndpoint(
        "http://vllm.test/v1", model="smollm2", embedding_table_source=backend, supports_prompt_embeds=True,
        http_client=httpx2.Client(transport=answer),
    )
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    with pytest.raises(BackendError, match=match):
        remote.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)


def test_a_server_error_that_echoes_the_api_key_does_not_carry_it(backend: HFBackend) -> None:
    echo = httpx2.MockTransport(
        lambda r: httpx2.Response(401, text=f"unknown key {r.headers['authorization'].split()[-1]}")
    )
    remote = EmbedsEndpoint(
        "http://vllm.test/v1", model="smollm2", embedding_table_source=backend, supports_prompt_embeds=True,
        api_key="team7x", http_client=httpx2.Client(transport=echo),
    )
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    with pytest.raises(BackendError, match="401") as caught:
        remote.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)
    assert "team7x" not in str(caught.value) and "unknown key" in str(caught.value)


def test_a_password_in_the_endpoints_url_is_never_shown(backend: HFBackend) -> None:
    down = httpx2.MockTransport(lambda r: httpx2.Response(503, text="busy"))
    remote = EmbedsEndpoint(
        "http://tuner:s3cr3t-pw@vllm.test/v1", model="smollm2", embedding_table_source=backend, supports_prompt_embeds=True,
        http_client=httpx2.Client(transport=down),
    )
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "prefix")
    with pytest.raises(BackendError, match="503") as caught:
        remote.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS), template.label_token_ids)
    assert "s3cr3t-pw" not in str(caught.value) and "tuner:***@vllm.test" in str(caught.value)
    assert "s3cr3t-pw" not in repr(remote)


def test_bad_endpoint_options_are_refused(backend: HFBackend) -> None:
    bad = ({"top_logprobs": 0}, {"top_logprobs": 21}, {"wire_dtype": "int8"}, {"batch_size": 0})
    not_integers = ({"batch_size": 2.5}, {"batch_size": True}, {"top_logprobs": 5.5}, {"top_logprobs": True})  # 2.5 failed mid-run
    for options in (*bad, *not_integers):
        with pytest.raises(ConfigError):
            EmbedsEndpoint("http://vllm.test/v1", model="m", embedding_table_source=backend, **options)
    with pytest.raises(ConfigError):
        EmbedsEndpoint("http://vllm.test/v1", model="m", embedding_table_source=object())


def test_a_tuner_runs_over_the_endpoint(backend: HFBackend) -> None:
    double = VLLMDouble(backend)
    remote = endpoint(backend, double, batch_size=64)
    train = [(TEXTS[0], "positive"), (TEXTS[1], "negative")]
    tuned = Tuner(
        remote,
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        train=train,
        dev=train,
        config=BBTConfig(d=4, prompt_len=1, popsize=4, budget=8, dev_every=4, placement="suffix", progress=False),
    )
    prompt = tuned.fit()
    assert len(double.bodies) == 2 + 2  # one request per generation (4 prompts x 2 examples) and per dev evaluation
    assert prompt.info.model_id == "smollm2"
    label, probs = prompt.classify([TEXTS[0]])[0]
    assert label in VERBALIZER and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_tuned_prompt_is_served_through_an_openai_clients_create(backend: HFBackend) -> None:
    import blackbox_sdk
    from blackbox_sdk.tuning import SoftPrompt

    double = VLLMDouble(backend)
    remote = endpoint(backend, double)
    embeds = torch.randn(2, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    prompt = SoftPrompt.create(embeds, model_id="smollm2", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    classified = prompt.classify(TEXTS, target=remote)
    client = blackbox_sdk.OpenAI(
        base_url="http://vllm.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(double))
    )
    served = remote.read_labels(prompt, client.completions.create(**remote.completion_params(prompt, TEXTS)))
    assert double.bodies[-1]["prompt"] == [] and len(double.bodies[-1]["prompt_embeds"]) == 2
    assert [label for label, _ in served] == [label for label, _ in classified]
    for (_, mine), (_, theirs) in zip(served, classified, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-5)


def test_closing_an_endpoint_closes_the_http_client_it_made_and_no_other(backend: HFBackend) -> None:
    with EmbedsEndpoint("http://vllm.test/v1", model="smollm2", embedding_table_source=backend) as made:
        assert not made._http.is_closed
    assert made._http.is_closed
    with endpoint(backend, VLLMDouble(backend)) as given:  # built with an http_client of the caller's
        pass
    assert not given._http.is_closed  # the caller closes it


def test_completion_params_refuse_one_string_for_a_list_of_texts(backend: HFBackend) -> None:
    from blackbox_sdk.tuning import SoftPrompt

    remote = endpoint(backend, VLLMDouble(backend))
    prompt = SoftPrompt.create(torch.zeros(2, 576), model_id="smollm2", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    with pytest.raises(TuningError, match="not one str"):  # else each character would be a text
        remote.completion_params(prompt, TEXTS[0])


def test_a_budget_counts_prompt_embeds_as_the_server_does(backend: HFBackend) -> None:
    """A batch of prompt_embeds is counted from the tensors' shapes: the reservation covers it, the
    calibration learns no hidden tokens (the count equals the server's), and a cap it would cross
    refuses it before anything is sent."""
    import blackbox_sdk
    from blackbox_sdk.tuning import SoftPrompt

    double = VLLMDouble(backend)
    remote = endpoint(backend, double)
    embeds = torch.randn(2, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    prompt = SoftPrompt.create(embeds, model_id="smollm2", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    params = remote.completion_params(prompt, TEXTS)
    prices = {"smollm2": {"input": 1000.0, "output": 1000.0}}  # $0.001 a token
    budget = blackbox_sdk.Budget(total_usd=10.0, prices=prices)
    client = blackbox_sdk.OpenAI(
        base_url="http://vllm.test/v1", api_key="sk-test", budget=budget,
        http_client=httpx2.Client(transport=httpx2.MockTransport(double)),
    )
    answer = client.completions.create(**params)
    sent = sum(int(decode_embeds(item).shape[0]) for item in double.bodies[-1]["prompt_embeds"])
    assert answer.usage.prompt_tokens == sent > 20
    assert budget.calibration.overhead(f"{client.base_url}#completions", "smollm2") == 0

    tight = blackbox_sdk.Budget(total_usd=0.8 * sent / 1000, prices=prices)  # room for most of the batch's prompt, not all
    refusing = blackbox_sdk.OpenAI(
        base_url="http://vllm.test/v1", api_key="sk-test", budget=tight,
        http_client=httpx2.Client(transport=httpx2.MockTransport(double)),
    )
    before = len(double.bodies)
    with pytest.raises(blackbox_sdk.BudgetExceededError):
        refusing.completions.create(**params)
    assert len(double.bodies) == before and tight.spent() == 0


@pytest.mark.parametrize("item", ["not base64!", "aGVsbG8=", None])
def test_a_malformed_prompt_embeds_item_is_refused_before_sending(backend: HFBackend, item: Any) -> None:
    """An item that is not base64 of a saved 2-D tensor: a 400-style InvalidRequestError, nothing sent or held."""
    import blackbox_sdk
    from blackbox_sdk import InvalidRequestError

    double = VLLMDouble(backend)
    budget = blackbox_sdk.Budget(total_usd=10.0, prices={"smollm2": {"input": 1.0, "output": 1.0}})
    client = blackbox_sdk.OpenAI(
        base_url="http://vllm.test/v1", api_key="sk-test", budget=budget,
        http_client=httpx2.Client(transport=httpx2.MockTransport(double)),
    )
    flat = encode_embeds(torch.zeros(4))
    with pytest.raises(InvalidRequestError, match="prompt_embeds"):
        client.completions.create(model="smollm2", prompt=[], max_tokens=1, extra_body={"prompt_embeds": [flat, item]})
    assert double.bodies == [] and budget.report().outstanding_reservations == 0


def test_prompt_embeds_without_torch_is_a_missing_dependency_not_a_malformed_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torch where the client runs: the environment's fault (MissingDependencyError, an ImportError), never
    blamed on the request as an InvalidRequestError; nothing sent or held."""
    import blackbox_sdk
    from blackbox_sdk import InvalidRequestError, MissingDependencyError

    sent: list[httpx2.Request] = []
    budget = blackbox_sdk.Budget(total_usd=10.0, prices={"smollm2": {"input": 1.0, "output": 1.0}})
    client = blackbox_sdk.OpenAI(
        base_url="http://vllm.test/v1", api_key="sk-test", budget=budget, max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(lambda request: sent.append(request) or httpx2.Response(500))),
    )
    item = encode_embeds(torch.zeros(3, 8))  # a well-formed item
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match="need torch") as raised:
        client.completions.create(model="smollm2", prompt=[], max_tokens=1, extra_body={"prompt_embeds": [item]})
    assert isinstance(raised.value, ImportError) and not isinstance(raised.value, InvalidRequestError)
    assert sent == [] and budget.report().outstanding_reservations == 0


def _reshaped(answer: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """The answer with its choices taken in `order` (positions in the answer: one left out, repeated or moved)."""
    return {**answer, "choices": [answer["choices"][i] for i in order]}


@pytest.mark.parametrize("order", [[0], [0, 1, 1], [1, 1]], ids=["fewer", "more", "repeated"])
def test_an_answer_without_one_choice_per_text_is_refused_not_misread(backend: HFBackend, order: list[int]) -> None:
    """A server (or a proxy between) that answers fewer, more or repeated choices than the texts asked for: a
    BackendError naming the indices, never labels matched to the wrong texts."""
    import blackbox_sdk
    from blackbox_sdk import BlackBoxError
    from blackbox_sdk.tuning import SoftPrompt

    double = VLLMDouble(backend)
    remote = endpoint(backend, double)
    prompt = SoftPrompt.create(torch.zeros(2, 576), model_id="smollm2", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    client = blackbox_sdk.OpenAI(base_url="http://vllm.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(double)))
    answer = client.completions.create(**remote.completion_params(prompt, TEXTS)).model_dump()
    with pytest.raises(BlackBoxError, match="indices"):
        remote.read_labels(prompt, _reshaped(answer, order), TEXTS)


def test_an_answers_choices_are_read_in_the_order_of_their_index(backend: HFBackend) -> None:
    import blackbox_sdk
    from blackbox_sdk.tuning import SoftPrompt

    double = VLLMDouble(backend)
    remote = endpoint(backend, double)
    embeds = torch.randn(2, 576, generator=torch.Generator().manual_seed(1)) * 0.02
    prompt = SoftPrompt.create(embeds, model_id="smollm2", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    client = blackbox_sdk.OpenAI(base_url="http://vllm.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(double)))
    answer = client.completions.create(**remote.completion_params(prompt, TEXTS)).model_dump()
    in_order = remote.read_labels(prompt, answer, TEXTS)
    assert remote.read_labels(prompt, _reshaped(answer, [1, 0]), TEXTS) == in_order
    assert in_order[0][1] != in_order[1][1]  # the two texts read differently: a swap would show
    with pytest.raises(BackendError, match=r"indices \[1, 1\]"):  # a repeat shows without the texts too
        remote.read_labels(prompt, _reshaped(answer, [1, 1]))
