"""Scoring soft prompts over HTTP, on servers whose `/v1/completions` takes prompt embeddings.

vLLM's OpenAI-compatible server started with `--enable-prompt-embeds` accepts `prompt_embeds` (a
list gives a batch): base64 of `torch.save(tensor)`, shape (seq_len, hidden), float32, bfloat16 or
float16. `prompt` is left out (vLLM reads `prompt: ""` as one more, empty, prompt and answers 400
"The decoder prompt cannot be empty"); through an OpenAI client, whose `create` requires it, it is
`[]`. The server applies no template, so the client embeds every token itself and needs the
model's embedding table locally (`embedding_table_source`: an HFBackend or a model path). Only the
generated tokens' log-probs come back (no echo, no prompt_logprobs), so a label is read from the
first generated token (`max_tokens=1`, greedy), asking for the verbalizer tokens by id
(`logprob_token_ids`, answered exactly by vLLM 0.32) and for token ids as keys
(`return_tokens_as_token_ids`, answered as `"token_id:123"`; decoded strings are matched too).

A server that ignores `logprob_token_ids` answers the top-k only; a verbalizer token outside it
gets an explicit stand-in log-prob: `min(lowest shown log-prob, log(remaining mass / missing
labels))`, where the remaining mass is `1 - sum(shown probabilities)`. The true value can't exceed
either bound, so a missing label never outranks a shown one, and the loss stays finite.

Most servers can't take embeddings (llama.cpp's server, TGI; SGLang only off the OpenAI routes),
so the capability is a switch: `supports_prompt_embeds=True` must be set explicitly, otherwise
scoring raises EmbeddingsNotSupportedError before any request. This client only sends tensors and
never loads one from a server (see CVE-2025-62164 for why servers must be careful loading them:
use vLLM >= 0.11.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import httpx2
import torch

from .._closing import Closing
from .._embeds import encode_embeds
from .._exceptions import BackendError, ConfigError, EmbeddingsNotSupportedError, TuningError
from .._redact import redact_text, remember_secret
from .._redis_url import redact_url
from ._examples import checked_texts
from ._soft_prompt import SoftPrompt, label_and_probs
from ._template import EncodedExamples, PromptTemplate

MAX_SERVER_LOGPROBS = 20  # vLLM's default --max-logprobs
TOKEN_ID_PREFIX = "token_id:"
_WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def missing_logprob(shown: Sequence[float], missing: int) -> float:
    """Stand-in log-prob for each of `missing` tokens absent from a top-k list of log-probs `shown`."""
    floor = min(shown)
    remaining = max(1.0 - sum(math.exp(v) for v in shown), 1e-12)
    return min(floor, math.log(remaining / missing))


class EmbedsEndpoint(Closing):
    """A completions endpoint that takes prompt embeddings (vLLM style), as a soft-prompt scorer; `close()` or `with` frees
    the HTTP connections it opened."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        embedding_table_source: Any,
        api_key: str | None = None,
        supports_prompt_embeds: bool = False,
        top_logprobs: int = MAX_SERVER_LOGPROBS,
        wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        batch_size: int = 64,
        timeout: float = 120.0,
        http_client: httpx2.Client | None = None,
    ) -> None:
        if not (_integer(top_logprobs) and 1 <= top_logprobs <= MAX_SERVER_LOGPROBS):
            raise ConfigError(f"top_logprobs must be an integer in 1..{MAX_SERVER_LOGPROBS}, got {top_logprobs!r}")
        if wire_dtype not in _WIRE_DTYPES:
            raise ConfigError(f"wire_dtype must be one of {sorted(_WIRE_DTYPES)}, got {wire_dtype!r}")
        if not (_integer(batch_size) and batch_size >= 1):
            raise ConfigError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
        self.url = base_url.rstrip("/") + "/completions"
        self._where = redact_url(self.url)  # the URL as messages and repr show it: a password in it as ***
        self.model_id = model
        self.supports_prompt_embeds = supports_prompt_embeds
        self.top_logprobs = top_logprobs
        self.wire_dtype = _WIRE_DTYPES[wire_dtype]
        self.batch_size = batch_size
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        remember_secret(api_key)  # a server that echoes it in an error body: redacted from BackendError
        self._owns_http = http_client is None  # a client the caller passed is the caller's to close
        self._http = http_client or httpx2.Client(timeout=timeout)
        source = _table_source(embedding_table_source)
        self.tokenizer = source.tokenizer
        self._table = source.input_embeddings().weight.detach()
        self.device: torch.device = self._table.device

    def __repr__(self) -> str:
        """Names the endpoint and model, never the key."""
        switch = self.supports_prompt_embeds
        return f"EmbedsEndpoint({self._where!r}, model={self.model_id!r}, supports_prompt_embeds={switch})"

    def close(self) -> None:
        """Close the HTTP client this endpoint made (its pooled connections); one passed as http_client is left open."""
        if self._owns_http:
            self._http.close()

    def embedding_table(self) -> torch.Tensor:
        """The local copy of the model's input-embedding matrix [V, H]."""
        return self._table

    def tokens_sent(self, prompt_len: int, examples: EncodedExamples) -> int:
        """Prompt positions one candidate sends on these examples (what the server bills)."""
        return sum(examples.tokens_per_sequence(prompt_len))

    def label_logprobs(
        self, prompts: torch.Tensor, examples: EncodedExamples, label_ids: Sequence[int]
    ) -> torch.Tensor:
        """Label log-probs [P, N, C] at the first generated token, one sequence per (prompt, example)."""
        if not self.supports_prompt_embeds:
            raise EmbeddingsNotSupportedError(f"{self!r} is not marked as taking prompt embeddings; nothing was sent")
        label_ids = list(label_ids)
        soft = prompts.detach().to(self._table.device, torch.float32)
        sequences = self._sequences(soft, examples)
        rows: list[list[float]] = []
        for start in range(0, len(sequences), self.batch_size):
            rows += self._request(sequences[start : start + self.batch_size], label_ids)
        return torch.tensor(rows, dtype=torch.float32).reshape(len(soft), len(examples), len(label_ids))

    def completion_params(self, prompt: SoftPrompt, texts: Sequence[str]) -> dict[str, Any]:
        """Keyword arguments for any OpenAI client's `completions.create` that classify texts with prompt here."""
        template = self._template(prompt)
        soft = prompt.embeds[None].to(self._table.device)
        body = self._body(self._sequences(soft, template.encode(checked_texts(texts))), template.label_token_ids)
        core = {key: body.pop(key) for key in ("model", "max_tokens", "temperature", "logprobs")}
        return {**core, "prompt": [], "extra_body": body}

    def read_labels(
        self, prompt: SoftPrompt, completion: Any, texts: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) per text of a `completions.create` answer to completion_params, in the order of
        the texts (the choices' `index`); an answer with a choice missing, repeated or extra (more or fewer than `texts`,
        when given) is a BackendError, never labels matched to the wrong texts."""
        template = self._template(prompt)
        answer = completion.model_dump() if hasattr(completion, "model_dump") else completion
        choices = self._ordered_choices(answer, None if texts is None else len(checked_texts(texts)))
        rows = torch.tensor([self._label_row(c, template.label_token_ids) for c in choices], dtype=torch.float32)
        return [label_and_probs(template.labels, row) for row in torch.softmax(rows, dim=-1)]

    def _template(self, prompt: SoftPrompt) -> PromptTemplate:
        """The template prompt was tuned with, on this endpoint's tokenizer."""
        hidden = int(self._table.shape[1])
        if prompt.info.hidden_size != hidden:
            raise TuningError(f"this soft prompt is for hidden size {prompt.info.hidden_size}, the model has {hidden}")
        return PromptTemplate(prompt.template, prompt.verbalizer, self.tokenizer, prompt.placement)

    def _sequences(self, soft: torch.Tensor, examples: EncodedExamples) -> list[torch.Tensor]:
        """Input embeddings [T, H] of every (prompt, example) pair, prompt-major: head, soft prompt, tail."""
        heads = [self._embed(ids) for ids in examples.heads]
        tails = [self._embed(ids) for ids in examples.tails]
        return [torch.cat([heads[i], soft[p], tails[i]]) for p in range(len(soft)) for i in range(len(examples))]

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Token embeddings [T, H] (float32) of ids from the local table."""
        return self._table[torch.tensor(list(ids), dtype=torch.long, device=self._table.device)].float()

    def _body(self, sequences: list[torch.Tensor], label_ids: list[int]) -> dict[str, Any]:
        """The /completions body that scores sequences: one greedy token, the labels' log-probs by id."""
        return {
            "model": self.model_id,
            "prompt_embeds": [encode_embeds(s.to(self.wire_dtype)) for s in sequences],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": self.top_logprobs,
            "logprob_token_ids": label_ids,
            "return_tokens_as_token_ids": True,
        }

    def _request(self, sequences: list[torch.Tensor], label_ids: list[int]) -> list[list[float]]:
        """One batched /completions request; label log-probs per sequence, in order."""
        try:
            response = self._http.post(self.url, json=self._body(sequences, label_ids), headers=self._headers)
        except httpx2.HTTPError as exc:
            raise BackendError(redact_text(f"can't reach {self._where}: {exc}")) from None
        if response.status_code != 200:
            raise BackendError(redact_text(f"{self._where} answered {response.status_code}: {response.text[:300]}"))
        try:
            answer = response.json()
        except ValueError:
            raise BackendError(redact_text(f"{self._where} answered 200 with no JSON: {response.text[:300]}")) from None
        return [self._label_row(choice, label_ids) for choice in self._ordered_choices(answer, len(sequences))]

    def _ordered_choices(self, answer: Any, expected: int | None) -> list[Any]:
        """The answer's choices by `index`, which must run 0, 1, ... once each (`expected` of them, when known): one per
        prompt embedding sent, else a BackendError naming what came back."""
        choices = sorted(_field(answer, "choices", list), key=lambda c: _field(c, "index", int))
        indices = [c["index"] for c in choices]
        if indices != list(range(len(indices) if expected is None else expected)):
            asked = "" if expected is None else f" for {expected} prompt embeddings"
            raise BackendError(f"{self._where} returned choices with the indices {indices}{asked}"[:300])
        return choices

    def _label_row(self, choice: Any, label_ids: list[int]) -> list[float]:
        """Label log-probs of one choice's first generated token, with the stand-in for labels outside the top-k."""
        tops = _field(_field(choice, "logprobs", dict), "top_logprobs", list)
        if not tops or not isinstance(tops[0], dict) or not tops[0]:
            raise BackendError(f"{self._where} returned no top log-probs for the first generated token")
        shown = {self._token_id(key): self._logprob(value) for key, value in tops[0].items()}
        missing = [t for t in label_ids if t not in shown]
        stand_in = missing_logprob(list(shown.values()), len(missing)) if missing else 0.0
        return [shown.get(t, stand_in) for t in label_ids]

    def _logprob(self, value: Any) -> float:
        """A log-prob the server answered: a number a float holds, not NaN, at most 0 (up to rounding); BackendError otherwise."""
        number = float(value) if isinstance(value, float) or (type(value) is int and abs(value) < 2**1023) else math.nan
        if math.isnan(number) or number > 1e-3:
            raise BackendError(f"{self._where} returned {value!r:.100} as a log-prob"[:300])
        return number

    def _token_id(self, key: str) -> int:
        """The token id of a top_logprobs key: `token_id:N`, or a decoded token text (-1 when it is not one token)."""
        if key.startswith(TOKEN_ID_PREFIX):
            number = key[len(TOKEN_ID_PREFIX) :]
            if not (number.isascii() and number.isdigit()):  # "²" is a digit to isdigit, not to int()
                raise BackendError(f"{self._where} returned the token key {key!r}"[:300])
            return int(number)
        ids = self.tokenizer.encode(key, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else -1


def _integer(value: Any) -> bool:
    """Whether value is an int and not a bool (a float batch size fails only at the first request)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _table_source(source: Any) -> Any:
    """The object holding the tokenizer and embedding table: an HFBackend as given, or one loaded from a path."""
    if isinstance(source, (str, Path)):
        from ..local import load_backend

        return load_backend(source)
    if not (hasattr(source, "tokenizer") and hasattr(source, "input_embeddings")):
        raise ConfigError("embedding_table_source must be an HFBackend or a path to the served model's weights")
    return source


def _field(container: Any, name: str, kind: type) -> Any:
    """container[name] checked to be of kind, or a BackendError naming what the server got wrong."""
    value = container.get(name) if isinstance(container, dict) else None
    if not isinstance(value, kind):
        raise BackendError(f"malformed completions response: {name!r} should be {kind.__name__}, got {value!r}"[:300])
    return value
