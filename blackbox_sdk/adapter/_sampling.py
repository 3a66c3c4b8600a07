"""Sampling answers for the online rounds: `Samples`, and a sampler on the SDK client, fresh per round and cached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """K sampled answers to one question and what getting them cost."""

    answers: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    call_id: str | None = None  # the call log's id when answers[0] is the call's choice 0 (for feedback)


AnswerSampler = Callable[[str, int, int], Samples]  # (question, k, round) -> k fresh samples for that round


@dataclass
class ClientAnswerSampler:
    """`(question, k, round) -> Samples` through the SDK client's chat API, fresh per round and cached."""

    client: Any
    model: str
    messages: Sequence[dict[str, str]] = ()  # system prompt and few-shot turns before the question
    create_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, question: str, k: int, round_number: int) -> Samples:
        """k fresh answers for this round: with a cache, ask for n = round*k (earlier rounds' are cached) and keep the last k."""
        cached = getattr(getattr(self.client, "options", None), "cache", None) is not None
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[*self.messages, {"role": "user", "content": question}],
            n=k * round_number if cached else k,
            **self.create_kwargs,
        )
        answers = [choice.message.content or "" for choice in response.choices][-k:]
        usage = response.usage
        share = len(answers) / max(len(response.choices), 1)  # usage covers every choice returned
        info = getattr(response, "blackbox", None)
        return Samples(
            answers,
            prompt_tokens=round(usage.prompt_tokens * share) if usage else 0,
            completion_tokens=round(usage.completion_tokens * share) if usage else 0,
            cost_usd=float(getattr(info, "cost_usd", 0.0) or 0.0),
            call_id=getattr(info, "call_id", None) if len(response.choices) == k else None,  # answers[0] is choice 0
        )


def client_answer_sampler(client: Any, model: str, *, messages: Sequence[dict[str, str]] = (), **create_kwargs: Any) -> ClientAnswerSampler:
    """An answer sampler for `online_train` on an SDK client (create_kwargs: temperature, max_tokens, stop, ...)."""
    return ClientAnswerSampler(client, model, list(messages), create_kwargs)
