"""Black-Box Tuning on the real local SmolLM2: bad input up front, scoring, search, checkpoints, the artefact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pydantic
import pytest
import torch
from safetensors.torch import save as to_safetensors

import blackbox_sdk
from blackbox_sdk._exceptions import (
    BudgetExceededError,
    EmbeddingsNotSupportedError,
    TuningError,
)
from blackbox_sdk.local._backend import HFBackend, load_backend
from blackbox_sdk.tuning import (
    BBTConfig,
    LocalScorer,
    PromptTemplate,
    SoftPrompt,
    Tuner,
    build_projection,
    population_losses,
    sample_few_shot,
)
from blackbox_sdk.tuning._cma import LayerSearch

TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TRAIN = [
    ("A warm and funny film, I loved it.", "positive"),
    ("The battery died in an hour, awful.", "negative"),
    ("Wonderful acting and a clever story.", "positive"),
    ("A dull, boring mess of a movie.", "negative"),
]
DEV = [
    ("These headphones sound amazing.", "positive"),
    ("The blender broke after a week.", "negative"),
]
TINY = {"d": 8, "prompt_len": 2, "popsize": 4, "budget": 8, "dev_every": 4, "progress": False}


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> HFBackend:
    """The process-wide local backend for the packaged SmolLM2."""
    torch.set_num_threads(2)
    return load_backend(gguf_path)


def tuner(backend: HFBackend, **options: Any) -> Tuner:
    """A tiny tuner on the sentiment examples above."""
    return Tuner(
        backend, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=BBTConfig(**{**TINY, **options})
    )


# ---------------------------------------------------------------- bad input, before any call


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("It was {label}", id="no-text-slot"),
        pytest.param("{text} It was", id="no-label-slot"),
        pytest.param("{label}: {text}", id="label-before-text"),
        pytest.param("{text} It was {label}.", id="label-not-last"),
        pytest.param("{text} {text} It was {label}", id="two-text-slots"),
    ],
)
def test_templates_without_usable_slots_are_refused(backend: HFBackend, template: str) -> None:
    with pytest.raises(TuningError):
        PromptTemplate(template, VERBALIZER, backend.tokenizer, "prefix")


@pytest.mark.parametrize(
    "verbalizer",
    [
        pytest.param({"positive": "wonderfully-great", "negative": "terrible"}, id="multi-token-word"),
        pytest.param({"positive": "great", "negative": "great"}, id="same-token"),
        pytest.param({"positive": "great"}, id="one-label"),
        pytest.param({"positive": "great", "negative": " "}, id="empty-word"),
    ],
)
def test_verbalizers_need_distinct_single_tokens(backend: HFBackend, verbalizer: dict[str, str]) -> None:
    with pytest.raises(TuningError):
        PromptTemplate(TEMPLATE, verbalizer, backend.tokenizer, "prefix")


def test_verbalizer_tokens_carry_the_space_the_template_puts_before_them(backend: HFBackend) -> None:
    words = {"positive": "good", "negative": "bad"}
    spaced = PromptTemplate("{text} It was {label}", words, backend.tokenizer, "prefix")
    glued = PromptTemplate("{text} It was:{label}", words, backend.tokenizer, "prefix")
    assert spaced.label_token_ids == backend.tokenizer.encode(" good") + backend.tokenizer.encode(" bad")
    assert glued.label_token_ids == backend.tokenizer.encode("good") + backend.tokenizer.encode("bad")
    with pytest.raises(TuningError, match="single token"):
        PromptTemplate("{text} It was:{label}", VERBALIZER, backend.tokenizer, "prefix")  # "terrible" is 2 tokens


@pytest.mark.parametrize(
    "train",
    [
        pytest.param([], id="empty"),
        pytest.param(TRAIN[:3], id="unbalanced"),
        pytest.param([*TRAIN, ("Meh.", "neutral"), ("Fine.", "neutral")], id="unknown-label"),
        pytest.param([("", "positive"), ("Bad.", "negative")], id="empty-text"),
        pytest.param([("Good.",), ("Bad.", "negative")], id="not-a-pair"),
    ],
)
def test_bad_training_sets_are_refused(backend: HFBackend, train: list[Any]) -> None:
    with pytest.raises(TuningError):
        Tuner(backend, template=TEMPLATE, verbalizer=VERBALIZER, train=train, config=BBTConfig(**TINY))


def test_a_budget_below_one_generation_is_refused() -> None:
    with pytest.raises(TuningError, match="budget"):
        BBTConfig(popsize=20, budget=10)


def test_targets_that_cannot_take_embeddings_are_refused_before_any_call() -> None:
    sent: list[Any] = []

    def server(request: Any) -> Any:
        sent.append(request)
        raise AssertionError("no request may be sent")

    import httpx2

    http_client = httpx2.Client(transport=httpx2.MockTransport(server))
    for target in (
        openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http_client),
        blackbox_sdk.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http_client),
        "hf:default",
    ):
        with pytest.raises(EmbeddingsNotSupportedError):
            Tuner(target, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**TINY))
    assert sent == []


def test_an_hf_client_is_tuned_through_its_backend(backend: HFBackend, gguf_path: Path) -> None:
    client = blackbox_sdk.OpenAI(base_url=f"hf:{gguf_path}")
    tuned = Tuner(client, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, config=BBTConfig(**TINY))
    assert isinstance(tuned.scorer, LocalScorer) and tuned.scorer.backend is backend


# ---------------------------------------------------------------- the projection and the losses


def test_projection_std_follows_the_bbtv2_formula() -> None:
    d, std_e, alpha, sigma = 200, 0.136, 0.5, 2.0
    projection = build_projection(d, 4, 576, std_e=std_e, alpha=alpha, sigma=sigma, seed=3)
    assert projection.shape == (4 * 576, d)
    assert float(projection.std()) == pytest.approx(alpha * std_e / (math.sqrt(d) * sigma), rel=0.01)
    assert torch.equal(projection, build_projection(d, 4, 576, std_e=std_e, alpha=alpha, sigma=sigma, seed=3))
    assert not torch.equal(projection, build_projection(d, 4, 576, std_e=std_e, alpha=alpha, sigma=sigma, seed=4))


def test_tuner_scales_its_projection_from_the_embedding_table(backend: HFBackend) -> None:
    tuned = tuner(backend, d=64, prompt_len=8, alpha=0.5, sigma0=0.5)
    std_e = float(backend.input_embeddings().weight.detach().float().std())
    assert float(tuned.projection.std()) == pytest.approx(0.5 * std_e / (math.sqrt(64) * 0.5), rel=0.02)


def test_losses_follow_their_definitions() -> None:
    logprobs = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]]))  # [P=1, N=2, C=3]
    labels = torch.tensor([0, 1])
    ce, accuracy = population_losses(logprobs, labels, "ce", 2.0)
    assert float(ce[0]) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, rel=1e-5)
    assert float(accuracy[0]) == 0.5
    hinge, _ = population_losses(logprobs, labels, "hinge", 2.0)
    expected = (max(0, 2 - math.log(0.7 / 0.2)) + max(0, 2 - math.log(0.3 / 0.4))) / 2
    assert float(hinge[0]) == pytest.approx(expected, rel=1e-5)
    negative, _ = population_losses(logprobs, labels, "neg_acc", 2.0)
    assert float(negative[0]) == -0.5


@pytest.mark.parametrize("loss", ["ce", "hinge", "neg_acc"])
def test_label_logprobs_without_mass_give_a_finite_worst_loss_never_nan(loss: str) -> None:
    inf, nan = math.inf, math.nan
    logprobs = torch.tensor([
        [[-0.1, -2.5], [-2.0, -0.2]],  # a good candidate: both right
        [[-inf, -inf], [-2.0, -0.2]],  # no label has mass on the first example
        [[nan, -1.0], [-2.0, -0.2]],  # a NaN (an overflowed forward)
        [[-inf, -0.1], [-2.0, -0.2]],  # the true label has no mass: +inf before its floor
        [[-2.5, -0.1], [-2.0, -0.2]],  # a plain wrong answer on the first example
    ])
    losses, accuracy = population_losses(logprobs, torch.tensor([0, 1]), loss, 2.0)
    assert torch.isfinite(losses).all() and accuracy.tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert losses[1] == losses[2] == losses[3] >= losses[4] > losses[0]  # no mass is the worst answer, never the best


def test_an_evaluation_without_any_usable_label_logprob_is_a_tuning_error() -> None:
    with pytest.raises(TuningError, match="no usable log-probs for the label tokens"):
        population_losses(torch.full((3, 2, 2), -math.inf), torch.tensor([0, 1]), "ce", 2.0)


@pytest.mark.parametrize("broken", ["one candidate", "every candidate"])
def test_cma_es_is_never_told_nan_when_label_logprobs_are_minus_inf(
    backend: HFBackend, broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = tuner(backend, placement="suffix")
    original = tuned.scorer.label_logprobs

    def without_mass(prompts: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        logprobs = original(prompts, *args, **kwargs).clone()
        if prompts.shape[0] > 1:  # the training population, not the dev evaluation of its winner
            logprobs[: 1 if broken == "one candidate" else None] = -math.inf
        return logprobs

    monkeypatch.setattr(tuned.scorer, "label_logprobs", without_mass)
    told: list[list[float]] = []  # the fitness CMA-ES is given
    tell = LayerSearch.tell
    monkeypatch.setattr(LayerSearch, "tell", lambda self, solutions, fitness: told.append(list(fitness)) or tell(self, solutions, fitness))
    if broken == "every candidate":
        with pytest.raises(TuningError, match="no usable log-probs"):
            tuned.fit()
        assert told == []
        return
    tuned.fit()
    assert len(told) == 2 and all(math.isfinite(v) for fitness in told for v in fitness)
    assert all(fitness[0] == max(fitness) for fitness in told)  # the candidate without mass ranks last


# ---------------------------------------------------------------- scoring


def test_batched_population_loss_equals_one_by_one(backend: HFBackend) -> None:
    tuned = tuner(backend, placement="after_text")
    z = np.random.default_rng(0).standard_normal((4, tuned.config.d))
    batched, _ = tuned.score_population(z)
    one_by_one = torch.cat([tuned.score_population(z[i : i + 1])[0] for i in range(4)])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert len(set(batched.tolist())) == 4  # the candidates really differ


@pytest.mark.parametrize("placement", ["after_text", "suffix"])
def test_reusing_head_kv_caches_matches_full_forwards(backend: HFBackend, placement: str) -> None:
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, placement)
    examples = template.encode([t for t, _ in TRAIN])
    prompts = torch.randn(3, 2, 576, generator=torch.Generator().manual_seed(0)) * 0.13
    cached = LocalScorer(backend, batch_size=5).label_logprobs(prompts, examples, template.label_token_ids)
    full = LocalScorer(backend, reuse_cache=False).label_logprobs(prompts, examples, template.label_token_ids)
    assert torch.allclose(cached, full, atol=2e-3)


def test_a_prefix_prompt_of_word_embeddings_scores_like_those_words_as_text(backend: HFBackend) -> None:
    tokenizer = backend.tokenizer
    words = tokenizer.encode("Review:", add_special_tokens=False)
    text = TRAIN[0][0]
    assert tokenizer.encode(f"Review: {text} It was", add_special_tokens=False) == words + tokenizer.encode(
        f" {text} It was", add_special_tokens=False
    )
    soft = backend.input_embeddings().weight[torch.tensor(words)].float()[None]  # [1, L, H]
    as_prompt = PromptTemplate(" {text} It was {label}", VERBALIZER, tokenizer, "prefix")
    as_text = PromptTemplate("Review: {text} It was {label}", VERBALIZER, tokenizer, "prefix")
    scorer = LocalScorer(backend)
    with_soft = scorer.label_logprobs(soft, as_prompt.encode([text]), as_prompt.label_token_ids)
    with_words = scorer.label_logprobs(torch.zeros(1, 0, 576), as_text.encode([text]), as_text.label_token_ids)
    assert torch.allclose(with_soft, with_words, atol=1e-4)


# ---------------------------------------------------------------- the search


def test_a_short_fit_lowers_the_training_loss(backend: HFBackend) -> None:
    tuned = tuner(backend, d=16, popsize=6, budget=36, placement="suffix", alpha=1.0)
    start = tuned.evaluate(TRAIN, tuned.p0)["loss"]
    prompt = tuned.fit()
    assert len(tuned.history) == 6 and tuned.history[-1].calls == 36
    assert tuned.history[-1].best_so_far < start
    assert prompt.info.scores["calls"] == 36 and prompt.info.scores["dev_calls"] == len(tuned.dev_history) > 0


def test_the_call_hook_sees_every_evaluation_and_can_stop_the_search(backend: HFBackend) -> None:
    seen: list[tuple[int, int]] = []
    tuned = Tuner(
        backend,
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        train=TRAIN,
        dev=DEV,
        config=BBTConfig(**{**TINY, "budget": 12}),
        on_calls=lambda calls, tokens: seen.append((calls, tokens)),
    )
    prompt = tuned.fit()
    assert sum(c for c, _ in seen) == prompt.info.scores["calls"] + prompt.info.scores["dev_calls"]
    assert sum(t for _, t in seen) == prompt.info.scores["tokens"]
    train_tokens = sum(tuned._train.tokens_per_sequence(2))
    assert (4, 4 * train_tokens) in seen

    def refuse_after_one_generation(calls: int, tokens: int) -> None:
        if tuned.history:
            raise BudgetExceededError("cap", spent=1.0, reserved=1.0, limit=1.0, scope="total")

    tuned.on_calls = refuse_after_one_generation
    with pytest.raises(BudgetExceededError):
        tuned.fit(resume=False)
    assert len(tuned.history) == 1


def test_resuming_a_checkpoint_continues_exactly_as_an_uninterrupted_run(backend: HFBackend, tmp_path: Path) -> None:
    whole = tuner(backend, budget=16, placement="suffix").fit()
    first = tuner(backend, budget=8, placement="suffix", checkpoint_dir=tmp_path, checkpoint_every=1)
    first.fit()
    resumed = tuner(backend, budget=16, placement="suffix", checkpoint_dir=tmp_path)
    prompt = resumed.fit()
    assert [g.best_loss for g in resumed.history[:2]] == [g.best_loss for g in first.history]
    assert len(resumed.history) == 4
    assert torch.equal(prompt.embeds, whole.embeds)
    assert prompt.info.scores["calls"] == 16


def test_a_checkpoint_for_other_settings_is_not_resumed(backend: HFBackend, tmp_path: Path) -> None:
    tuner(backend, checkpoint_dir=tmp_path, placement="suffix").fit()
    with pytest.raises(TuningError, match="checkpoint"):
        tuner(backend, checkpoint_dir=tmp_path, placement="suffix", seed=1).fit()


def test_selection_without_dev_keeps_the_lowest_training_loss(backend: HFBackend) -> None:
    tuned = Tuner(
        backend,
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        train=TRAIN,
        config=BBTConfig(**{**TINY, "placement": "suffix"}),
    )
    prompt = tuned.fit()
    assert prompt.info.scores["train_loss"] == min(g.best_loss for g in tuned.history)
    assert "dev_accuracy" not in prompt.info.scores


def test_p0_from_words_and_from_a_saved_prompt(backend: HFBackend, tmp_path: Path) -> None:
    worded = tuner(backend, p0="vocab", p0_words=" It was")
    ids = backend.tokenizer.encode(" It was", add_special_tokens=False)
    assert torch.equal(worded.p0, backend.input_embeddings().weight[torch.tensor(ids)].float())
    random_words = tuner(backend, p0="vocab")
    assert random_words.p0.shape == (2, 576) and float(random_words.p0.abs().sum()) > 0
    saved = SoftPrompt.create(
        torch.ones(2, 576), model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="prefix"
    ).save(tmp_path / "p")
    assert torch.equal(tuner(backend, p0=saved).p0, torch.ones(2, 576))
    with pytest.raises(TuningError, match="shape"):
        tuner(backend, p0=saved, prompt_len=3)


def test_convergence_plot_is_a_png(backend: HFBackend, tmp_path: Path) -> None:
    tuned = tuner(backend, placement="suffix")
    with pytest.raises(TuningError):
        tuned.plot(tmp_path / "early.png")
    tuned.fit()
    assert tuned.plot(tmp_path / "bbt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the artefact


def test_save_and_load_round_trip_keeps_embeds_metadata_and_predictions(backend: HFBackend, tmp_path: Path) -> None:
    prompt = tuner(backend, placement="after_text").fit()
    folder = prompt.save(tmp_path / "sp")
    assert sorted(p.name for p in folder.iterdir()) == ["soft_prompt.json", "soft_prompt.safetensors"]
    assert (folder / "soft_prompt.safetensors").stat().st_mode == (folder / "soft_prompt.json").stat().st_mode  # both as the umask allows
    loaded = SoftPrompt.load(folder)
    assert torch.equal(loaded.embeds, prompt.embeds) and loaded.info == prompt.info
    assert loaded.z is not None and torch.equal(loaded.z, prompt.z)
    assert loaded.name == prompt.name and loaded.placement == "after_text"
    texts = [t for t, _ in DEV]
    assert loaded.classify(texts, backend) == prompt.classify(texts)


def test_loading_refuses_missing_or_inconsistent_files(tmp_path: Path) -> None:
    with pytest.raises(TuningError):
        SoftPrompt.load(tmp_path)
    folder = SoftPrompt.create(
        torch.zeros(2, 4), model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="prefix"
    ).save(tmp_path / "sp")
    info = (folder / "soft_prompt.json").read_text().replace('"prompt_len": 2', '"prompt_len": 3')
    (folder / "soft_prompt.json").write_text(info)
    with pytest.raises(TuningError, match="shape|\\[3, 4\\]"):
        SoftPrompt.load(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"placement": "middle"}, "placement", id="unknown-placement"),
        pytest.param({"scores": {"dev": "high"}}, "scores", id="score-not-a-number"),
        pytest.param({"surprise": 1}, "surprise", id="unknown-field"),
        pytest.param({"verbalizer": None}, "verbalizer", id="verbalizer-missing"),
        pytest.param({"prompt_len": 3}, "prompt_len: set by the embeds' shape", id="prompt-len-given"),
    ],
)
def test_create_refuses_bad_fields_with_a_tuning_error(changes: dict[str, Any], message: str) -> None:
    fields = {"model_id": "m", "template": TEMPLATE, "verbalizer": VERBALIZER, "placement": "prefix", **changes}
    with pytest.raises(TuningError, match=message) as refused:
        SoftPrompt.create(torch.zeros(2, 4), **fields)
    assert not isinstance(refused.value, pydantic.ValidationError) and refused.value.__cause__ is None


@pytest.mark.parametrize(
    ("z", "d", "message"),
    [
        pytest.param(torch.zeros(3), 4, r"z must be \[4\]", id="shorter-than-d"),
        pytest.param(torch.zeros(2, 4), 4, r"z must be \[4\]", id="layers-of-a-plain-prompt"),
        pytest.param(torch.zeros(()), 4, r"z must be \[4\]", id="a-scalar"),
        pytest.param(torch.full((4,), math.nan), 4, "z must be finite", id="nan"),
        pytest.param(torch.zeros(4), None, "needs its d", id="no-d-saved"),
    ],
)
def test_loading_refuses_a_z_that_does_not_fit_the_saved_d(tmp_path: Path, z: torch.Tensor, d: int | None, message: str) -> None:
    fields = {"model_id": "m", "template": TEMPLATE, "verbalizer": VERBALIZER, "placement": "prefix", "config": {"d": 4}}
    folder = SoftPrompt.create(torch.zeros(2, 8), z=torch.ones(4), d=4, **fields).save(tmp_path / "sp")
    assert tuple(SoftPrompt.load(folder).z.shape) == (4,)
    (folder / "soft_prompt.safetensors").write_bytes(to_safetensors({"embeds": torch.zeros(2, 8), "z": z}))
    if d is None:
        (folder / "soft_prompt.json").write_text((folder / "soft_prompt.json").read_text().replace('"d": 4,', '"d": null,', 1))
    with pytest.raises(TuningError, match=message):
        SoftPrompt.load(folder)
    with pytest.raises(TuningError, match="its config d=4"):
        SoftPrompt.create(torch.zeros(2, 8), z=torch.ones(5), d=5, **fields)  # the description and its config disagree


def test_classify_returns_label_probabilities_that_sum_to_one(backend: HFBackend) -> None:
    prompt = SoftPrompt.create(
        backend.input_embeddings().weight[:2].float(),
        model_id=backend.model_id,
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        placement="suffix",
    )
    results = prompt.classify(["I loved it.", "I hated it.", "It is a film."], backend)
    assert len(results) == 3
    for label, probs in results:
        assert set(probs) == set(VERBALIZER) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert label == max(probs, key=probs.__getitem__)
    with pytest.raises(TuningError, match="target"):
        prompt.classify(["x"])


def test_sample_few_shot_draws_disjoint_balanced_splits() -> None:
    pool = [(f"text {i}", "a" if i % 2 else "b") for i in range(20)]
    train, dev = sample_few_shot(pool, 3, seed=1)
    assert sorted(y for _, y in train) == ["a"] * 3 + ["b"] * 3 == sorted(y for _, y in dev)
    assert not set(train) & set(dev)
    with pytest.raises(TuningError):
        sample_few_shot(pool, 6)


@pytest.mark.parametrize(
    ("pool", "k", "match"),
    [
        pytest.param([("a", "x"), ("b", "y")] * 4, -1, "k must be an integer of at least 1", id="negative-k"),
        pytest.param([("a", "x"), ("b", "y")] * 4, 0, "k must be an integer of at least 1", id="zero-k"),
        pytest.param([("a", "x"), ("b", "y")] * 4, True, "k must be an integer of at least 1", id="bool-k"),
        pytest.param([("a", "x", "extra")] * 4, 1, r"pool\[0\] must be a \(text, label\) pair", id="not-a-pair"),
    ],
)
def test_sample_few_shot_refuses_a_bad_k_or_pool_with_a_tuning_error(pool: list[Any], k: Any, match: str) -> None:
    with pytest.raises(TuningError, match=match):
        sample_few_shot(pool, k)
