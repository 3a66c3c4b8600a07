"""Tokens the SDK counts itself: to reserve before a call, and to charge a call whose server
sent no usage. The local model's own tokenizer when one answers; else the `tokenizer=` option;
else the endpoint's own tokenize route when it runs on this machine (or `tokenizer="server"`);
else tiktoken.
"""

from __future__ import annotations

from typing import Any

from .._embeds import embeds_lengths
from .._tokenizer import SERVER, ServerTokenizer, TokenCounter
from .._types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Json, usage_to_charge
from ..budget import TokenCount, count_chat_tokens, count_input_tokens, count_tokens
from ._call import Call
from ._candidates import generated
from ._response_input import input_messages
from ._validation import given


class UsageCounter:
    """Counts a call's prompt and answers with the tokenizer that fits its endpoint."""

    def __init__(self, backend: Any = None, server: ServerTokenizer | None = None, *, ask_server: bool = False) -> None:
        self.backend = backend
        self.server = server  # the endpoint's tokenize route, probed on first use
        self.ask_server = ask_server  # by default: the endpoint runs on this machine

    def _tokenizer(self, call: Call) -> TokenCounter | None:
        """The call's tokenizer: the option's, else the server's when it has one and is asked."""
        chosen = call.opts.tokenizer
        if isinstance(chosen, TokenCounter):
            return chosen
        if self.server is not None and (chosen == SERVER or (chosen is None and self.ask_server)):
            return self.server.counter(call.model)
        return None

    def may_block(self, call: Call) -> bool:
        """Whether counting this call's tokens may wait on I/O (the endpoint's tokenize route, unless it
        was probed and found missing) or on a caller's tokenizer."""
        chosen = call.opts.tokenizer
        if isinstance(chosen, TokenCounter):
            return True
        asks = chosen == SERVER or (chosen is None and self.ask_server)
        return self.server is not None and asks and self.server.may_answer

    def _text_counter(self, call: Call) -> Any:
        """What counts plain text for this call (None: tiktoken for the model)."""
        if self.backend is not None:
            return self.backend.count_tokens
        tokenizer = self._tokenizer(call)
        return tokenizer.count if tokenizer is not None else None

    def _prompt_counter(self, call: Call) -> Any:
        """What counts one text prompt of a completion or embedding for this call: with the special tokens (a BOS) the
        model's tokenizer adds to each, which its endpoint bills (None: tiktoken for the model)."""
        if self.backend is not None:
            return self.backend.text_prompt_tokens
        tokenizer = self._tokenizer(call)
        return tokenizer.prompt if tokenizer is not None else None

    def prompt(self, call: Call) -> TokenCount:
        """Prompt tokens of one request, with how they were counted; counted once per call (admission, reserve, charge)."""
        if call.prompt_count is None:
            call.prompt_count = self._prompt(call)
        counted: TokenCount = call.prompt_count
        return counted

    def _prompt(self, call: Call) -> TokenCount:
        """Count the prompt tokens of one request (the Responses API's instructions and input as chat messages)."""
        if call.route is CHAT or call.route is RESPONSES:
            messages = list(call.params["messages"]) if call.route is CHAT else input_messages(call.params)
            if self.backend is not None:
                return TokenCount(self._local_prompt(call, messages) + self._soft(call), "local tokenizer", True)
            tokenizer = self._tokenizer(call)
            extras = prompt_extras(call.params)
            if tokenizer is not None and tokenizer.chat is not None and not extras:
                return TokenCount(tokenizer.chat(messages), f"{tokenizer.name} chat template", True)
            counter = tokenizer.count if tokenizer is not None else None
            return count_chat_tokens(messages, call.model, tools=extras or None, tokenizer=counter)
        prompt: Any = call.params.get("input") if call.route is EMBEDDINGS else call.params.get("prompt")
        if call.prompt_embeds:  # embedded prompts (and maybe texts), summed as a list of texts is
            texts = count_input_tokens(prompt, call.model, tokenizer=self._prompt_counter(call)).tokens if prompt else 0
            return TokenCount(sum(embeds_lengths(call.prompt_embeds)) + texts, "prompt_embeds shapes", True)
        counted, soft = count_input_tokens(prompt, call.model, tokenizer=self._prompt_counter(call)), self._soft(call)
        return TokenCount(counted.tokens + soft, counted.method, counted.exact) if soft else counted

    def _local_prompt(self, call: Call, messages: list[Json]) -> int:
        """Tokens the local model's template renders for a chat or Responses call; a Responses input as the model reads
        it (its parts joined by newlines, its calls as an assistant's lines), else as chat messages."""
        params = {name: value if given(value) else None for name, value in call.params.items()}
        if call.route is RESPONSES:
            read = self.backend.responses_prompt_tokens(params.get("input"), instructions=params.get("instructions"), text=params.get("text"))
            if read is not None:
                return int(read)
        form = {"response_format": params.get("response_format")} if call.route is CHAT else {"text": params.get("text")}
        return int(self.backend.chat_prompt_tokens(messages, **form))

    def _soft(self, call: Call) -> int:
        """Positions the local model's soft prompt adds to the call's prompts (its L vectors each), as its usage counts them."""
        if self.backend is None or call.route is EMBEDDINGS:
            return 0
        body = call.params.get("extra_body")
        return int(self.backend.soft_prompt_tokens(body.get("soft_prompt") if isinstance(body, dict) else None)) * call.prompts

    def prompt_tokens(self, call: Call) -> int:
        """Prompt tokens of one request."""
        return int(self.prompt(call).tokens)

    def completion_tokens(self, call: Call, text: str) -> int:
        """Tokens of one answer."""
        return count_tokens(text, call.model, tokenizer=self._text_counter(call)).tokens

    def counted(self, call: Call, texts: list[str], requests: int = 1) -> Json:
        """Usage counted for answers the server did not count: `requests` prompts, each with what the endpoint adds to it
        as reserved (its hidden prompt, learnt from its answers; a stored context), and the texts."""
        call.usage_counted = True
        prompt = (self.prompt_tokens(call) + call.prompt_extra) * max(1, requests)
        completion = sum(self._answer_tokens(call, texts))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _answer_tokens(self, call: Call, texts: list[str]) -> list[int]:
        """Tokens each answer generated (`_generated_tokens`)."""
        echoed = echoed_prompts(call)
        return [self._generated_tokens(call, text, echoed, i / len(texts)) for i, text in enumerate(texts)]

    def _generated_tokens(self, call: Call, text: str, echoed: list[Any], at: float) -> int:
        """Tokens of one answer (`at` its place among the answers, 0 to 1) less the prompt a completion with `echo` sent
        back in front of it, billed as input already: the longest prompt text it starts with, or the count of its token ids."""
        said = max((prompt for prompt in echoed if isinstance(prompt, str) and text.startswith(prompt)), key=len, default="")
        if said or not echoed or isinstance(echoed[0], str):
            return self.completion_tokens(call, text[len(said):])
        ids = echoed[int(at * len(echoed))]  # choices come prompt by prompt
        return max(0, self.completion_tokens(call, text) - len(ids))

    def of_response(self, call: Call, response: Json) -> Json:
        """A whole response's usage (in the chat shape), or a count of all its answers generated (`generated`: tool
        calls too) when the server sent none."""
        usage = call.route.usage(response)
        if usage and usage.get("completion_tokens") is not None:
            return usage
        answers = [response] if call.route is RESPONSES else [c for c in response.get("choices") or [] if isinstance(c, dict)]
        texts = [generated(call.route, answer) for answer in answers]
        counted = self.counted(call, texts)
        discarded = self._discarded(call, len(answers))
        if not discarded:
            return counted
        held = call.reservation
        each = held.max_output_tokens if held is not None else max(self._answer_tokens(call, texts), default=0)
        unseen = discarded * each
        return {**counted, "completion_tokens": counted["completion_tokens"] + unseen, "total_tokens": counted["total_tokens"] + unseen}

    @staticmethod
    def _discarded(call: Call, returned: int) -> int:
        """How many of a completions call's `best_of` generations its server made, billed and did not return; each is
        counted at its reserved output cap (an answer never seen, as a lost one; without a budget, as the longest seen)."""
        per_prompt = max(1, returned // call.prompts)
        return max(0, call.generations(per_prompt) - per_prompt) * call.prompts

    def of_stream(self, call: Call, usages: list[Json], texts: list[str]) -> Json:
        """A finished stream's usage: the server's usage chunks summed, or a count of the texts."""
        return usage_to_charge(usages) if usages else self.counted(call, texts, call.info.requests)


def echoed_prompts(call: Call) -> list[Any]:
    """The prompts a legacy completion with `echo` sends back in front of its answers (texts, or lists of token ids);
    none without echo."""
    prompt = call.params.get("prompt")
    if call.route is not COMPLETIONS or not call.params.get("echo") or not isinstance(prompt, (str, list)) or not prompt:
        return []
    return [prompt] if isinstance(prompt, str) or all(isinstance(token, int) for token in prompt) else list(prompt)


def prompt_extras(params: Json) -> list[Json]:
    """What a request sends besides its messages that endpoints count as prompt: tools (chat's legacy `functions`
    too), and the JSON schema of a structured output (chat's `response_format`, the Responses API's `text.format`)."""
    extras = [dict(tool) for name in ("tools", "functions") if isinstance(params.get(name), list) for tool in params[name]]
    text = params.get("text")
    for form in (params.get("response_format"), text.get("format") if isinstance(text, dict) else None):
        if isinstance(form, dict) and form.get("type") in ("json_schema", "json_object"):
            extras.append(dict(form))
    return extras
