"""Leave one family out: does a recipe chosen on other tasks beat majority vote on a new one? `python benchmarks/run.py adapter_lofo`.

Options: `[--quick] [--json FILE] [--family NAME ...] [--train 30|180 ...]`. Issue 18, part 1. A
user's task is none of the benchmark's, so a recipe (encoder, trainable layers, LoRA rank, rounds)
is judged on a family that took no part in choosing it. Per family of `FAMILIES`
(benchmarks/tasks/suite.py) and per training size (30 and 180 questions; capitals has only 153
for the larger size), every recipe of the grid is trained once with the online rounds against
SmolLM2 on llama.cpp through the SDK client and judged on the family's 40 held-out questions
(`split`) over 4 disjoint draws of 8 samples, as in `bench_adapter` (whose functions this reuses):
single, majority@8, adapter@8, oracle@8, the gap recovered and its bootstrap interval. The
held-out questions never reach training: no `eval_items` are given to `online_train`. Judging
scores through ONNX Runtime (`fast=True`: the torch path's scores to about 1e-5, so the same picks).

The grid (`GRID`, cheapest first; ties go to the cheaper recipe):
- minilm-lora: MiniLM-L6, all six layers through rank-8 LoRA, lr 1e-3, 2 rounds of 8 samples,
  8 epochs per round: comparison's shipped recipe, and the cheapest (7-10x faster to score);
- mpnet-lora: all-mpnet-base-v2's top four layers through rank-8 LoRA, otherwise the same:
  the knowledge tasks' recipe (a larger encoder holds facts that training cannot teach);
- mpnet-lora-3r: mpnet-lora with a third round (8 more samples per question, the second
  adapter's wrong picks as negatives): arithmetic's recipe.
These are the library's `blackbox_sdk.adapter.RECIPES`, exactly the recipes `bench_adapter` picks
by task name (`TASK_RECIPES`); the protocol asks whether that choice can be made without the name.
Every recipe chooses its consensus weight on its own validation questions (`OnlineConfig`).

Two selections, each judged on the held-out family F:
- LOFO: the recipe with the highest pooled gap recovered over the other families at the same
  training size. capitals and capital_facts share their facts (capital_facts asks about the
  capitals that capitals asks for), so when either is held out the other is left out of the
  choice too (`PAIRED`): the choice is made on six families for those two, on seven otherwise.
- auto: what `blackbox_sdk.adapter.online_train_auto` keeps (`choose_recipe`): the recipe whose
  last round's `validation_accuracy` (on the quarter of F's own training questions kept for
  validation, never on held-out ones) is highest, what a user with a new task can do. It needs
  no extra training here: it picks among the same trainings.
Rows per family and size: the LOFO and auto picks with single, majority@8, adapter@8, oracle@8,
gap recovered (95% interval) and whether the adapter beats majority vote; then pooled rows over
the families (interval by resampling questions across families) with the goal: above majority
vote on every held-out family and at least half of the single-to-oracle gap pooled; then every
recipe on every family (what the choices chose from).

Each (family, size, recipe) result is a small JSON file under benchmarks/results/adapter_lofo/, kept
in the repository: the full protocol takes longer than one session, so each session commits the
results it finished and the next runs only what is missing; a re-run with every result stored only
re-tabulates without starting llama.cpp. An interrupted training resumes its rounds from
.bench/adapter_lofo/default/adapters/ on the same machine. Samples share bench_adapter's disk cache (.bench/adapter/cache, fixed
port), so the three shipped tasks' samples are reused. `--family` and `--train` split the work
across sessions; the table covers every family whose results exist for the whole grid.

Cost of the full protocol, estimated from bench_adapter's runs on 2 CPU cores (the 30-question half
measured about 20 minutes a family, 2026-12-03; docs/adapter.md has its table):
samples per family are 40 x 32 held-out + 180 x 8 x 3 rounds = 5,600 (the 30-question set is the
first 30 of the 180, and the recipes share the same sampled requests), 44,800 for eight families
(about 31,000 new if the three shipped tasks' samples are cached); at the 4-5 samples/s that
bench_adapter's empty-cache run implies, 2 to 3 hours of sampling. Trainings: 8 families x 2
sizes x 3 recipes = 48; at 180 questions about 1-3 minutes (minilm-lora), 10 (mpnet-lora) and 15
(mpnet-lora-3r), at 30 about a sixth: about 4.5 hours of training on 2 CPU cores, minutes on a GPU. Scoring the held-out candidates:
about 20 minutes. In all about 7-8 hours on 2 CPU cores from an empty cache (the timings were
measured with whole layers training; LoRA may train somewhat faster).

`--quick`: comparison and opposites, 6 training and 4 held-out questions, 1 round of 4 samples,
1 epoch, 1 draw, two tiny MiniLM recipes (both selections choose between them), its own cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench_adapter import (
    MODEL,
    SAMPLING,
    WORK,
    evaluate_reranking,
    gap_interval,
    gap_recovered,
    local_server,
)
from tasks.suite import FAMILIES, KIND, Task, split

FAMILY_NAMES = tuple(t.name for t in FAMILIES)
TRAIN_SIZES = (30, 180)
LOFO_WORK = WORK.parent / "adapter_lofo"  # adapters in training (resumable), --quick's cache
LOFO_RESULTS = Path(__file__).resolve().parent / "results" / "adapter_lofo"  # committed: one result per file
PAIRED = {"capitals": "capital_facts", "capital_facts": "capitals"}  # share facts: out of each other's choice


@dataclass(frozen=True)
class Scale:
    """How much of each family the protocol uses, how hard each recipe trains, and the grid."""

    families: tuple[str, ...]
    train_sizes: tuple[int, ...]  # training questions per family (capped at what a family has)
    held_out: int  # held-out questions per family (`split`: the same whatever the training size)
    samples: int  # K, per round and per draw
    rounds: int  # online rounds of the 2-round recipes
    epochs: int  # passes per round
    draws: int  # disjoint sets of K per held-out question
    grid: tuple[str, ...]  # recipe names, cheapest first


def recipe_config(name: str, scale: Scale) -> Any:
    """A recipe's OnlineConfig at this scale: the library's (`blackbox_sdk.adapter.RECIPES`), or --quick's tiny one."""
    from blackbox_sdk.adapter import RECIPES, Recipe

    recipe = Recipe("default", 2, lora_rank=4) if name == QUICK_RECIPE else RECIPES[name]
    return recipe.config(rounds=scale.rounds, samples=scale.samples, epochs_per_round=scale.epochs)


QUICK_RECIPE = "minilm-top2-lora"  # MiniLM-L6's top two layers through rank-4 LoRA: --quick's second tiny recipe
GRID = ("minilm-lora", "mpnet-lora", "mpnet-lora-3r")  # blackbox_sdk.adapter.RECIPES, cheapest first
FULL = Scale(FAMILY_NAMES, TRAIN_SIZES, held_out=40, samples=8, rounds=2, epochs=8, draws=4, grid=GRID)
QUICK = Scale(("comparison", "opposites"), (6,), held_out=4, samples=4, rounds=1, epochs=1, draws=1, grid=("minilm-lora", QUICK_RECIPE))


@dataclass
class Result:
    """One recipe trained on one family at one size, judged on its held-out questions (a JSON file)."""

    family: str
    train: int  # the training size asked for
    recipe: str
    train_questions: int  # what the family had (capitals: 153 for 180)
    validation_accuracy: float | None  # the last round's, on the training questions' validation quarter
    validation_majority_accuracy: float | None = None
    consensus: float | None = None
    train_s: float = 0.0
    tokens_per_question: float = 0.0
    per_question: dict[str, list[float]] = field(default_factory=dict)  # bench_adapter.METHODS -> per held-out question
    config: dict[str, Any] = field(default_factory=dict)  # the recipe's OnlineConfig, to notice a changed recipe

    @classmethod
    def from_json(cls, text: str) -> Result:
        """A result from its file (keys it does not know are ignored)."""
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def config_json(config: Any) -> dict[str, Any]:
    """An OnlineConfig as JSON data (tuples as lists), as it is stored and compared."""
    return json.loads(json.dumps(asdict(config), default=str))


def results_dir(quick: bool) -> Path:
    """Where results are kept: the full protocol's in the repository (a run spans sessions), --quick's under .bench."""
    return LOFO_WORK / "quick" / "results" if quick else LOFO_RESULTS


def result_path(results: Path, family: str, train: int, recipe: str) -> Path:
    """Where one (family, size, recipe) result is kept."""
    return results / f"{family}-{train}-{recipe}.json"


def load_result(results: Path, scale: Scale, family: str, train: int, recipe: str) -> Result | None:
    """The stored result when it exists and was made with the recipe as it is now, else None."""
    path = result_path(results, family, train, recipe)
    if not path.is_file():
        return None
    result = Result.from_json(path.read_text())
    return result if result.config == config_json(recipe_config(recipe, scale)) else None


def run_one(client: Any, task: Task, train: int, recipe: str, scale: Scale, work: Path, results: Path) -> Result:
    """Train one recipe on one family's training questions (resuming its rounds), judge it on the held-out ones, store it."""
    from blackbox_sdk.adapter import (
        Adapter,
        OnlineQuestion,
        client_answer_sampler,
        online_train,
    )

    items, held = split(task, min(train, len(task.items) - scale.held_out), scale.held_out)
    config = recipe_config(recipe, scale)
    recipe_json = config_json(config)  # before training: online_train sets the chosen consensus on config.adapter
    questions = [OnlineQuestion(question=i.question, reference=i.reference, gold=list(i.gold)) for i in items]
    out = work / "adapters" / f"{task.name}-{train}-{recipe}"
    state = out / "online_state.json"
    if state.is_file() and json.loads(state.read_text()).get("fingerprint") != config.fingerprint(questions):
        shutil.rmtree(out)  # a state of an older recipe: start afresh rather than be refused
    by_text = {i.question: i for i in items}
    sampler = client_answer_sampler(client, MODEL, messages=task.messages(), **SAMPLING)
    report = online_train(sampler, questions, lambda q, answer: task.check(by_text[q.question], answer), out, config=config)
    last = report.rounds[-1]
    per_question, tokens, _ = evaluate_reranking(client, Adapter.load(out, shared=False, fast=True), task, held, scale.samples, scale.draws)
    result = Result(
        task.name, train, recipe, len(items), last.get("validation_accuracy"), last.get("validation_majority_accuracy"), last.get("consensus"),
        round(sum(r.get("train_seconds", 0.0) for r in report.rounds), 1), tokens, per_question, recipe_json,
    )
    path = result_path(results, task.name, train, recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(asdict(result)) + "\n")
    path.with_suffix(".tmp").replace(path)
    return result


# The bookkeeping: pure functions of the stored results (tests/test_lofo_selection.py).


def pooled(results: Sequence[Result]) -> dict[str, list[float]]:
    """The results' per-question accuracies, question lists joined across families."""
    out: dict[str, list[float]] = {}
    for result in results:
        for method, values in result.per_question.items():
            out.setdefault(method, []).extend(values)
    return out


def complete_families(results: Mapping[tuple[str, str], Result], grid: Sequence[str]) -> list[str]:
    """Families with a result for every recipe of the grid, in first-seen order (only these count)."""
    families = list(dict.fromkeys(family for family, _ in results))
    return [f for f in families if all((f, r) in results for r in grid)]


def lofo_choice(results: Mapping[tuple[str, str], Result], held_out: str, grid: Sequence[str]) -> tuple[str | None, list[str]]:
    """The recipe with the highest pooled gap over the other families (less `held_out`'s pair), and those families.

    `results` holds one training size, keyed (family, recipe). Ties and undefined gaps go to the
    earlier (cheaper) recipe of the grid; None when no other family has a complete grid.
    """
    others = [f for f in complete_families(results, grid) if f not in (held_out, PAIRED.get(held_out))]
    if not others:
        return None, []

    def gap(recipe: str) -> float:
        value = gap_recovered(pooled([results[(f, recipe)] for f in others]))
        return float("-inf") if value is None else round(value, 9)  # equal sums in another order still tie

    return max(grid, key=lambda r: (gap(r), -grid.index(r))), others


def auto_choice(results: Mapping[tuple[str, str], Result], family: str, grid: Sequence[str]) -> str:
    """The recipe `online_train_auto` keeps: the highest validation accuracy on the family's own training questions (ties: the cheaper)."""
    from blackbox_sdk.adapter import choose_recipe

    return choose_recipe({recipe: results[(family, recipe)].validation_accuracy for recipe in grid})


def _interval(per_question: dict[str, list[float]]) -> str | None:
    """The gap recovered's 95% bootstrap interval as "low..high" (None without a gap)."""
    if gap_recovered(per_question) is None:
        return None
    low, high = gap_interval(per_question)
    return f"{low:.2f}..{high:.2f}"


def beats_majority(per_question: dict[str, list[float]]) -> bool:
    """Whether the adapter's picks are right more often than majority vote's (a tie does not beat it)."""
    return sum(per_question["adapter"]) > sum(per_question["majority"]) + 1e-9


def score_row(per_question: dict[str, list[float]], k: int) -> dict[str, Any]:
    """single, majority@k, adapter@k, oracle@k, the gap recovered with its interval, and whether the adapter beats majority."""
    accuracy = {m: sum(per_question[m]) / len(per_question[m]) for m in ("single", "majority", "adapter", "oracle")}
    return {
        "single": accuracy["single"],
        f"majority@{k}": accuracy["majority"],
        f"adapter@{k}": accuracy["adapter"],
        f"oracle@{k}": accuracy["oracle"],
        "gap_recovered": gap_recovered(per_question),
        "gap_ci95": _interval(per_question),
        "beats_majority": "yes" if beats_majority(per_question) else "no",
    }


def size_rows(results: Mapping[tuple[str, str], Result], train: int, grid: Sequence[str], k: int) -> list[dict[str, Any]]:
    """One training size's rows: per family the LOFO and auto picks, the pooled rows with the goal, then every recipe."""
    families = complete_families(results, grid)
    picked: dict[str, list[Result]] = {"lofo": [], "auto": []}
    out: list[dict[str, Any]] = []
    for family in families:
        lofo, others = lofo_choice(results, family, grid)
        auto = auto_choice(results, family, grid)
        on_others = f"{len(others)} other famil{'y' if len(others) == 1 else 'ies'}"
        for selection, recipe, basis in (("lofo", lofo, on_others), ("auto", auto, "own validation")):
            if recipe is None:
                continue
            result = results[(family, recipe)]
            picked[selection].append(result)
            out.append(_row(family, train, selection, recipe, basis, result, k))
    for selection, chosen in picked.items():
        if chosen:
            out.append(pooled_row(chosen, train, selection, "per family", k))
    for recipe in grid:
        out += [_row(f, train, "fixed", recipe, "", results[(f, recipe)], k) for f in families]
        out.append(pooled_row([results[(f, recipe)] for f in families], train, "fixed", recipe, k))
    return out


def _row(family: str, train: int, selection: str, recipe: str, basis: str, result: Result, k: int) -> dict[str, Any]:
    """One family's row for one selection (lofo, auto or a fixed recipe)."""
    head = {"family": family, "kind": KIND.get(family, ""), "train": train, "selection": selection, "recipe": recipe, "chosen_on": basis}
    return {**head, **score_row(result.per_question, k), "validation_accuracy": result.validation_accuracy, "goal": None}


def pooled_row(chosen: Sequence[Result], train: int, selection: str, recipe: str, k: int) -> dict[str, Any]:
    """The pooled row over the families' chosen results, with the goal: above majority on every family and half the gap pooled."""
    scores = score_row(pooled(chosen), k)
    wins = sum(beats_majority(r.per_question) for r in chosen)
    gap = scores["gap_recovered"]
    goal = wins == len(chosen) and gap is not None and gap >= 0.5
    head = {"family": f"pooled ({len(chosen)})", "kind": "", "train": train, "selection": selection, "recipe": recipe, "chosen_on": ""}
    return {**head, **scores, "beats_majority": f"{wins}/{len(chosen)}", "validation_accuracy": None, "goal": "met" if goal else "not met"}


def table(results: Sequence[Result], grid: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Every training size's rows, smallest first."""
    by_size: dict[int, dict[tuple[str, str], Result]] = {}
    for result in results:
        if result.recipe in grid:
            by_size.setdefault(result.train, {})[(result.family, result.recipe)] = result
    return [row for train in sorted(by_size) for row in size_rows(by_size[train], train, grid, k)]


def rows(quick: bool, families: Sequence[str] | None = None, train_sizes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Run what is missing for the named families and sizes (default: all), then tabulate every stored result at those sizes."""
    scale = QUICK if quick else FULL
    work, results = LOFO_WORK / ("quick" if quick else "default"), results_dir(quick)
    sizes = tuple(train_sizes or scale.train_sizes)
    tasks = [t for t in FAMILIES if t.name in (families or scale.families)]
    missing = [(t, n, r) for t in tasks for n in sizes for r in scale.grid if load_result(results, scale, t.name, n, r) is None]
    if missing:
        _run_missing(missing, scale, work, results, quick)
    shown = dict.fromkeys([*scale.families, *(t.name for t in tasks)])
    stored = [load_result(results, scale, f, n, r) for f in shown for n in sizes for r in scale.grid]
    return table([r for r in stored if r is not None], scale.grid, scale.samples)


def _run_missing(missing: Sequence[tuple[Task, int, str]], scale: Scale, work: Path, results: Path, quick: bool) -> None:
    """Train and judge the missing (family, size, recipe) results with llama.cpp running (quick: a cache of its own)."""
    import torch

    import blackbox_sdk

    torch.set_num_threads(2)
    store = work if quick else WORK  # the full run shares bench_adapter's sample cache
    with local_server() as base_url:
        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="local", cache=store / "cache", log=store / "calls.db")
        for task, train, recipe in missing:
            run_one(client, task, train, recipe, scale, work, results)
