"""Deep prompts (BBTv2) on the real local SmolLM2: vectors inside every layer, one CMA-ES per layer in turn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_bbt import DEV, TEMPLATE, TRAIN, VERBALIZER  # the same sentiment task as the shallow prompts'

from blackbox_sdk._exceptions import TuningError
from blackbox_sdk.local._backend import HFBackend, load_backend
from blackbox_sdk.tuning import BBTConfig, EmbedsEndpoint, LocalScorer, PromptTemplate, SoftPrompt, Tuner

DEEP = {"d": 8, "prompt_len": 2, "popsize": 4, "budget": 16, "dev_every": 8, "progress": False, "deep": True}
LAYERS = 30  # SmolLM2-135M's decoder layers


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> HFBackend:
    """The process-wide local backend for the packaged SmolLM2."""
    torch.set_num_threads(2)
    return load_backend(gguf_path)


def tuner(backend: HFBackend, **options: Any) -> Tuner:
    """A tiny deep tuner on the sentiment examples above."""
    config = BBTConfig(**{**DEEP, "placement": "suffix", **options})
    return Tuner(backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=config)


def zero_deep_prompt() -> SoftPrompt:
    """A deep SoftPrompt of zeros (for the refusals, which must come before any scoring)."""
    return SoftPrompt.create(
        torch.zeros(2, 576),
        layers=torch.zeros(LAYERS - 1, 2, 576),
        model_id="m",
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        placement="suffix",
    )


def random_layers(count: int, scale: float, seed: int = 0) -> torch.Tensor:
    """Deep prompt layers [count, LAYERS - 1, 2, 576] of the given per-entry std."""
    return torch.randn(count, LAYERS - 1, 2, 576, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_zero_layers_score_exactly_like_a_plain_prompt(backend: HFBackend, placement: str) -> None:
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, placement)
    examples = template.encode([t for t, _ in TRAIN])
    prompts = torch.randn(3, 2, 576, generator=torch.Generator().manual_seed(1)) * 0.13
    scorer = LocalScorer(backend)
    plain = scorer.label_logprobs(prompts, examples, template.label_token_ids)
    zero = scorer.label_logprobs(prompts, examples, template.label_token_ids, layers=torch.zeros(3, LAYERS - 1, 2, 576))
    assert torch.equal(plain, zero)


def test_deep_layers_act_at_the_prompt_positions_with_and_without_the_head_cache(backend: HFBackend) -> None:
    # The cached forward starts at the prompt; the full one finds it after the left-padded heads.
    # Were the hooks off by a position in either, the two would disagree.
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    examples = template.encode([t for t, _ in TRAIN])
    prompts = torch.randn(3, 2, 576, generator=torch.Generator().manual_seed(2)) * 0.13
    layers = random_layers(3, 2.0)
    cached = LocalScorer(backend, batch_size=5).label_logprobs(prompts, examples, template.label_token_ids, layers=layers)
    full = LocalScorer(backend, reuse_cache=False).label_logprobs(prompts, examples, template.label_token_ids, layers=layers)
    plain = LocalScorer(backend).label_logprobs(prompts, examples, template.label_token_ids)
    assert torch.allclose(cached, full, atol=2e-3)
    assert (cached - plain).abs().max() > 0.05  # the layers really change the scores
    hooks = [len(layer._forward_pre_hooks) for layer in backend.model.get_decoder().layers]
    assert hooks == [0] * LAYERS  # removed after every forward


def test_layers_of_the_wrong_shape_are_refused(backend: HFBackend) -> None:
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    with pytest.raises(TuningError, match="deep prompt layers"):
        LocalScorer(backend).label_logprobs(
            torch.zeros(1, 2, 576), template.encode(["x"]), template.label_token_ids, layers=torch.zeros(1, 3, 2, 576)
        )


def test_each_layers_projection_is_scaled_by_its_hidden_state_std(backend: HFBackend) -> None:
    tuned = tuner(backend, d=64, alpha=0.2, sigma0=0.2)
    assert tuned.layers == LAYERS and tuple(tuned.projection.shape) == (LAYERS, 2 * 576, 64)
    stds = tuned.layer_stds
    assert stds[0] == pytest.approx(tuned.std_e)
    # Without each example's first position: SmolLM2 parks activations of about 20,000 there, and
    # with it the std of the middle layers is near 300 instead of under 30.
    assert all(0.5 < s < 40 for s in stds[1:]) and stds[-1] > 5 * stds[1]
    for layer in (0, 15, 29):
        expected = 0.2 * stds[layer] / (math.sqrt(64) * 0.2)
        assert float(tuned.projection[layer].std()) == pytest.approx(expected, rel=0.03)
    assert not torch.equal(tuned.projection[1], tuned.projection[2])
    plain = Tuner(
        backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**{**DEEP, "deep": False, "d": 64})
    )
    assert plain.layers == 1
    assert torch.equal(plain.projection[0], Tuner(backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**{**DEEP, "d": 64})).projection[0])


def test_measuring_the_layers_scales_is_announced_as_one_call(backend: HFBackend) -> None:
    seen: list[tuple[int, int]] = []
    config = BBTConfig(**{**DEEP, "placement": "suffix"})
    tuned = Tuner(
        backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=config, on_calls=lambda c, t: seen.append((c, t))
    )
    assert seen == [(1, sum(tuned._train.tokens_per_sequence(0)))]  # before any search: the hidden-state pass
    with pytest.raises(RuntimeError, match="no"):
        Tuner(backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=config, on_calls=refuse)


def refuse(calls: int, tokens: int) -> None:
    """A call hook that refuses every call, as a spent budget would."""
    raise RuntimeError("no")


def test_a_deep_fit_searches_one_layer_per_generation_and_lowers_the_loss(backend: HFBackend) -> None:
    tuned = tuner(backend, budget=24)
    start = tuned.evaluate(TRAIN, torch.cat([tuned.p0[None], torch.zeros(LAYERS - 1, 2, 576)]))["loss"]
    prompt = tuned.fit()
    assert len(tuned.history) == 6 and tuned.history[-1].best_so_far < start
    assert prompt.deep and tuple(prompt.layers.shape) == (LAYERS - 1, 2, 576)
    assert prompt.info.layers == LAYERS and tuple(prompt.z.shape) == (LAYERS, 8)
    # six generations searched layers 0..5; the others are still at z = 0, so their vectors are zero
    assert prompt.z[6:].abs().sum() == 0 and prompt.layers[5:].abs().sum() == 0
    assert prompt.z[:6].abs().sum(dim=1).gt(0).sum() >= 1
    assert tuned.evaluate(TRAIN, prompt)["loss"] == pytest.approx(prompt.info.scores["train_loss"], abs=1e-4)


def test_a_deep_checkpoint_resumes_exactly_as_an_uninterrupted_run(backend: HFBackend, tmp_path: Path) -> None:
    # dev every generation, so the first fit's extra dev evaluation of its last one changes nothing
    whole = tuner(backend, budget=24, dev_every=4).fit()
    tuner(backend, budget=12, dev_every=4, checkpoint_dir=tmp_path, checkpoint_every=1).fit()
    resumed = tuner(backend, budget=24, dev_every=4, checkpoint_dir=tmp_path)
    prompt = resumed.fit()
    assert len(resumed.history) == 6
    assert torch.equal(prompt.embeds, whole.embeds) and torch.equal(prompt.layers, whole.layers)
    with pytest.raises(TuningError, match="checkpoint"):
        tuner(backend, budget=24, checkpoint_dir=tmp_path, deep=False).fit()  # a plain run can't take a deep state


def test_a_deep_prompt_saves_loads_and_classifies_as_it_was_tuned(backend: HFBackend, tmp_path: Path) -> None:
    tuned = tuner(backend, budget=8)
    prompt = tuned.fit()
    loaded = SoftPrompt.load(prompt.save(tmp_path / "deep"), target=backend)
    assert loaded.deep and torch.equal(loaded.layers, prompt.layers) and loaded.info == prompt.info
    texts = [t for t, _ in TRAIN]
    probs = [p for _, p in loaded.classify(texts)]
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    logprobs = LocalScorer(backend).label_logprobs(
        prompt.embeds[None], template.encode(texts), template.label_token_ids, layers=prompt.layers[None]
    )[0]
    expected = torch.softmax(logprobs, dim=-1)
    assert np.allclose([[p["positive"], p["negative"]] for p in probs], expected.numpy(), atol=1e-5)
    plain = SoftPrompt.create(prompt.embeds, model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix")
    assert [p for _, p in plain.classify(texts, target=backend)] != probs  # the layers are used


def test_deep_prompt_shapes_are_checked(backend: HFBackend) -> None:
    prompt = tuner(backend, budget=4).fit()
    with pytest.raises(TuningError, match="layers"):
        SoftPrompt(prompt.embeds, prompt.info)  # a 30-layer description without its layers
    with pytest.raises(TuningError, match="layers"):
        SoftPrompt(prompt.embeds, prompt.info, layers=prompt.layers[:3])
    with pytest.raises(TuningError, match="layer"):
        Tuner(backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**{**DEEP, "deep": False})).evaluate(TRAIN, prompt)


def test_deep_prompts_are_refused_on_an_http_endpoint_before_any_call(backend: HFBackend) -> None:
    def no_call(request: Any) -> Any:
        raise AssertionError("nothing may be sent")

    import httpx2

    endpoint = EmbedsEndpoint(
        "http://127.0.0.1:9/v1",
        model="smollm2",
        embedding_table_source=backend,
        supports_prompt_embeds=True,
        http_client=httpx2.Client(transport=httpx2.MockTransport(no_call)),
    )
    with pytest.raises(TuningError, match="local model"):
        Tuner(endpoint, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**DEEP))
    prompt = zero_deep_prompt()
    with pytest.raises(TuningError, match="local model"):
        prompt.classify(["A fine film."], target=endpoint)


def test_a_client_refuses_a_deep_prompt_as_a_request_option(backend: HFBackend, tmp_path: Path) -> None:
    import blackbox_sdk
    from blackbox_sdk._exceptions import ConfigError

    prompt = zero_deep_prompt()
    client = blackbox_sdk.OpenAI(base_url="hf:default")
    for value in (prompt, prompt.save(tmp_path / "deep")):
        with pytest.raises(ConfigError, match="deep"):
            client.with_options(soft_prompt=value)
        with pytest.raises(ConfigError, match="deep"):
            client.completions.create(model="smollm2", prompt="Hi", max_tokens=1, soft_prompt=value)
