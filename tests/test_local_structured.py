"""JSON-schema structured output from the real SmolLM2 GGUF, parsed by openai's own helpers
(`chat.completions.parse`, `responses.parse`, `responses.stream`), plus the schema subset itself."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from blackbox_sdk.local import HFBackend
from blackbox_sdk.local._matching import match
from blackbox_sdk.local._schema import compile_schema
from blackbox_sdk.local._structured import chat_format

pytest_plugins = ["local_model"]  # the backend, client and aclient fixtures

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


class City(BaseModel):
    name: str
    country: str


class Place(BaseModel):
    city: City
    population: int
    capital: bool
    size: Literal["small", "big"]
    nickname: str | None
    tags: list[str] = Field(max_length=2)


CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
    "required": ["name", "country"],
    "additionalProperties": False,
}


# ------------------------------------------------------------ the real model, through openai's helpers


def test_chat_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="local", messages=FRANCE, response_format=City, max_tokens=40, temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert choice.message.parsed.name == "Paris"
    assert json.loads(choice.message.content or "") == choice.message.parsed.model_dump()


def test_sampled_choices_all_validate(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="local", messages=FRANCE, response_format=City, max_tokens=60, temperature=1.0, n=3, seed=7
    )
    assert [c.finish_reason for c in completion.choices] == ["stop"] * 3
    assert all(isinstance(c.message.parsed, City) for c in completion.choices)


def test_a_nested_schema_with_every_kind_validates(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Describe Paris."}]
    completion = client.chat.completions.parse(
        model="local", messages=messages, response_format=Place, max_tokens=120, temperature=0
    )
    place = completion.choices[0].message.parsed
    assert isinstance(place, Place)
    assert len(place.tags) <= 2


def test_json_object_mode_answers_one_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}],
        response_format={"type": "json_object"},
        max_tokens=40,
        temperature=0,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_json_object_with_a_schema_beside_it_is_held_to_that_schema(client: openai.OpenAI) -> None:
    schema_format = {"type": "json_object", "schema": City.model_json_schema()}  # as llama.cpp's servers take it
    completion = client.chat.completions.create(
        model="local", messages=FRANCE, max_tokens=40, temperature=0, extra_body={"response_format": schema_format}
    )
    assert City.model_validate_json(completion.choices[0].message.content or "").name == "Paris"


def test_a_streamed_chat_answer_is_the_same_valid_document(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": CITY_SCHEMA, "strict": True}}
    whole = client.chat.completions.create(
        model="local", messages=FRANCE, response_format=fmt, max_tokens=40, temperature=0  # type: ignore[arg-type]
    )
    chunks = client.chat.completions.create(
        model="local", messages=FRANCE, response_format=fmt, max_tokens=40, temperature=0, stream=True  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert City.model_validate_json(text).name == "Paris"


def test_responses_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    response = client.responses.parse(
        model="local", input="What is the capital of France?", text_format=City, max_output_tokens=40, temperature=0
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, City)
    assert response.output_parsed.name == "Paris"
    assert response.usage is not None and response.usage.output_tokens > 0


async def test_async_responses_stream_with_text_format_parses_the_final_response(
    aclient: openai.AsyncOpenAI,
) -> None:
    async with aclient.responses.stream(
        model="local", input="What is the capital of France?", text_format=City, max_output_tokens=40, temperature=0
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert isinstance(final.output_parsed, City)
    assert "".join(deltas) == final.output_text


async def test_async_chat_parse(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.parse(
        model="local", messages=FRANCE, response_format=City, max_tokens=40, temperature=0
    )
    assert isinstance(completion.choices[0].message.parsed, City)


def test_running_out_of_tokens_is_finish_reason_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="local", messages=FRANCE, response_format=City, max_tokens=4, temperature=0)


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        pytest.param({"type": "array", "items": {"type": "string"}}, "response_format.json_schema.schema", id="root"),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},
            "response_format.json_schema.schema",
            id="pattern",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"anyOf": [CITY_SCHEMA, {"type": "object"}]}}},
            "response_format.json_schema.schema",
            id="ambiguous-anyOf",
        ),
        pytest.param(
            {"$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}}, "type": "object",
             "properties": {"n": {"$ref": "#/$defs/N"}}},
            "response_format.json_schema.schema",
            id="recursive",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}},
            "response_format.json_schema.schema",
            id="negative-maxLength",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}}},
            "response_format.json_schema.schema",
            id="minLength-above-maxLength",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 1}}, "required": ["a"]},
            "response_format.json_schema.schema",
            id="minItems-above-maxItems",
        ),
    ],
)  # fmt: skip
def test_schemas_outside_the_subset_are_refused_with_400(
    client: openai.OpenAI, schema: dict[str, Any], param: str
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="local", messages=FRANCE, response_format=fmt, max_tokens=8)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_bad_formats_are_refused_on_both_routes_with_their_params(client: openai.OpenAI) -> None:
    refused = {}
    bodies = {
        "response_format.type": {"response_format": {"type": "yaml"}},
        "response_format.json_schema.name": {"response_format": {"type": "json_schema", "json_schema": {}}},
    }
    for param, extra in bodies.items():
        with pytest.raises(openai.BadRequestError) as chat:
            client.chat.completions.create(model="local", messages=FRANCE, extra_body=extra)  # type: ignore[arg-type]
        refused[param] = chat.value.param
    texts = {
        "text.format.type": {"format": {"type": "yaml"}},
        "text.format.name": {"format": {"type": "json_schema", "schema": CITY_SCHEMA}},
        "text.format.schema": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string"}}},
    }
    for param, text in texts.items():
        with pytest.raises(openai.BadRequestError) as responses:
            client.responses.create(model="local", input="hi", text=text)  # type: ignore[arg-type]
        refused[param] = responses.value.param
    assert refused == {param: param for param in refused}


# ------------------------------------------------------------ the schema subset, no model


PLACE_SCHEMA = chat_format({"type": "json_schema", "json_schema": {"name": "Place", "schema": Place.model_json_schema()}})


@pytest.mark.parametrize(
    ("text", "status", "forced"),
    [
        ("", "partial", "{"),
        ('{"na', "partial", 'me": '),
        ('{"name": "Par', "partial", ""),
        ('{"name": "Paris"', "partial", ', "country": '),
        ('{"name": "Paris", "country": "France"}', "complete", ""),
        ('{"name": "Paris"}', "invalid", ""),
        ('{"name":"Paris"', "invalid", ""),  # canonical separators only
        ('{"name": 1', "invalid", ""),
        ('{"name": "a\nb"', "invalid", ""),  # a raw control character
        ('{"name": "a\\nb", "country": "\\u00e7"}', "complete", ""),
        ('{"name": "a", "country": "b"} ', "invalid", ""),
    ],
)
def test_match_tells_complete_partial_and_invalid(text: str, status: str, forced: str) -> None:
    result = match(compile_schema(CITY_SCHEMA, param="s"), text)
    assert (result.status, result.forced) == (status, forced)


def test_every_prefix_of_a_valid_nested_document_is_partial() -> None:
    assert PLACE_SCHEMA is not None
    place = Place(city=City(name="Paris", country="France"), population=2100000, capital=True, size="big",
                  nickname=None, tags=["a", "b"])  # fmt: skip
    text = json.dumps(place.model_dump())
    assert match(PLACE_SCHEMA.node, text).status == "complete"
    assert {match(PLACE_SCHEMA.node, text[:i]).status for i in range(len(text))} == {"partial"}


HEAD = '{"city": {"name": "P", "country": "F"}, '


@pytest.mark.parametrize(
    "text",
    [
        HEAD + '"population": 01',  # a leading zero
        HEAD + '"population": 1.5',  # an integer with a fraction
        HEAD + '"population": 1234567890123456',  # more than 15 digits
        HEAD + '"population": 1, "capital": yes',
        HEAD + '"population": 1, "capital": true, "size": "huge"',  # not in the enum
        HEAD + '"population": 1, "capital": true, "size": "big", "nickname": 3',  # neither string nor null
        HEAD + '"population": 1, "capital": true, "size": "big", "nickname": null, "tags": ["a", "b", ',  # maxItems 2
    ],
)
def test_values_of_the_wrong_kind_are_invalid(text: str) -> None:
    assert PLACE_SCHEMA is not None
    assert match(PLACE_SCHEMA.node, text).status == "invalid"


def test_optional_properties_may_be_left_out_but_keep_their_order() -> None:
    node = compile_schema(
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"]},
        param="s",
    )
    assert match(node, '{"b": "x"}').status == "complete"
    assert match(node, '{"a": -3, "b": "x"}').status == "complete"
    assert match(node, '{"b": "x", "a": 1}').status == "invalid"
    assert match(node, "{}").status == "invalid"


def test_counted_prompt_tokens_include_the_formats_instruction(client: openai.OpenAI, backend: HFBackend) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": CITY_SCHEMA}}
    chat = client.chat.completions.create(model="local", messages=FRANCE, response_format=fmt, max_tokens=1)  # type: ignore[arg-type]
    text = {"format": {"type": "json_schema", "name": "City", "schema": CITY_SCHEMA}}
    response = client.responses.create(model="local", input=FRANCE[0]["content"], text=text, max_output_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None and response.usage is not None
    assert chat.usage.prompt_tokens == backend.chat_prompt_tokens(FRANCE, response_format=fmt)
    assert response.usage.input_tokens == backend.chat_prompt_tokens(FRANCE, text=text) == chat.usage.prompt_tokens
    assert chat.usage.prompt_tokens > backend.chat_prompt_tokens(FRANCE)
