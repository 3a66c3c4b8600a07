"""Black-Box Tuning (Sun et al., ICML 2022): search a soft prompt with CMA-ES, forward calls only.

The search runs in z in R^d; the soft prompt is `p = A z + p0` (L vectors of the model's hidden
size H; see `_projection`). Each CMA-ES generation scores the whole population on the training set
in batched forwards (popsize x examples sequences, no gradients) and reads only the verbalizer
tokens' log-probs at the answer position.

Counting: one *call* is one candidate evaluated on the whole training set (the paper's unit), so a
generation costs `popsize` calls and `budget` caps them; dev evaluations (one call each, on the dev
set) are counted apart in `dev_calls`. Every evaluation is announced to `on_calls(n_calls,
n_tokens)` before it runs, n_tokens being the prompt tokens a server would bill; a budget hook may
raise there to stop the search (the checkpoint written so far stays resumable). When the target is
an SDK client with a budget or a call log, each evaluation is also one call to them (`ClientMeter`):
reserved before its forward pass, settled after, logged with route "bbt".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._exceptions import TuningError
from ._checkpoint import fingerprint, load_checkpoint, save_checkpoint
from ._cma import new_strategy
from ._config import BBTConfig
from ._examples import Example, checked_examples
from ._losses import population_losses
from ._meter import ClientMeter, EvaluationKind
from ._plot import plot_convergence
from ._projection import build_projection, initial_prompt
from ._scorer import PromptScorer, resolve_target
from ._soft_prompt import SoftPrompt
from ._state import Best, DevRecord, GenerationRecord, SearchState
from ._template import EncodedExamples, PromptTemplate

OnCalls = Callable[[int, int], None]


class Tuner:
    """Tunes a soft prompt for a classification template on a target that takes input embeddings."""

    def __init__(
        self,
        target: Any,
        *,
        template: str,
        verbalizer: Mapping[str, str],
        train: Sequence[Example],
        dev: Sequence[Example] | None = None,
        config: BBTConfig | None = None,
        on_calls: OnCalls | None = None,
    ) -> None:
        self.config = config or BBTConfig()
        self.target = target
        self.scorer: PromptScorer = resolve_target(target, batch_size=self.config.batch_size)
        self.template = PromptTemplate(template, verbalizer, self.scorer.tokenizer, self.config.placement)
        self.train = checked_examples(train, self.template.labels, "train", balanced=True)
        self.dev = None if dev is None else checked_examples(dev, self.template.labels, "dev", balanced=False)
        self._train = self._encode(self.train)
        self._dev = None if self.dev is None else self._encode(self.dev)
        self.on_calls = on_calls
        self.meter = ClientMeter.of(target)  # the client's budget and call log, if it has either
        table = self.scorer.embedding_table().detach()
        self.hidden = int(table.shape[1])
        self.std_e = float(table.float().std())
        self.p0 = initial_prompt(self.config, self.scorer, table)  # [L, H] float32 on the scorer's device
        self.projection = build_projection(
            self.config.d,
            self.config.prompt_len,
            self.hidden,
            std_e=self.std_e,
            alpha=self.config.alpha,
            sigma=self.config.sigma0,
            seed=self.config.seed,
        ).to(self.scorer.device)  # [L*H, d]
        self.history: list[GenerationRecord] = []
        self.dev_history: list[DevRecord] = []

    def _encode(self, data: Sequence[Example]) -> EncodedExamples:
        """Token ids and class indexes of a checked data set."""
        return self.template.encode([t for t, _ in data], [y for _, y in data])

    # ------------------------------------------------------------ scoring

    def prompts(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Soft prompts [P, L, H] (float32) for search points z [P, d]: A z + p0."""
        zs = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.scorer.device).reshape(-1, self.config.d)
        return (zs @ self.projection.T).reshape(-1, self.config.prompt_len, self.hidden) + self.p0  # [P, L, H]

    def _score(
        self, kind: EvaluationKind, prompts: torch.Tensor, examples: EncodedExamples, loss: str
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss [P], accuracy [P], tokens billed) of one evaluation of prompts [P, L, H]: P calls, hook, meter."""
        calls, prompt_len = int(prompts.shape[0]), int(prompts.shape[1])
        tokens = calls * self.scorer.tokens_sent(prompt_len, examples)
        if self.on_calls is not None:
            self.on_calls(calls, tokens)
        with self._metered(kind, calls, len(examples), prompt_len, tokens):
            logprobs = self.scorer.label_logprobs(prompts, examples, self.template.label_token_ids)  # [P, N, C]
        losses, accuracy = population_losses(logprobs, torch.tensor(examples.labels), loss, self.config.margin)
        return losses, accuracy, tokens

    def _metered(
        self, kind: EvaluationKind, calls: int, examples: int, prompt_len: int, tokens: int
    ) -> AbstractContextManager[None]:
        """The client meter's call around one forward pass, or nothing when the target has no budget or log."""
        if self.meter is None:
            return nullcontext()
        return self.meter.call(kind, calls=calls, examples=examples, prompt_len=prompt_len, tokens=tokens)

    def score_population(self, z: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [P], accuracy [P]) of search points z [P, d] on the training set: one batched evaluation, P calls."""
        loss, accuracy, _ = self._score("train", self.prompts(z), self._train, self.config.loss)
        return loss, accuracy

    def evaluate(self, data: Sequence[Example], prompt: SoftPrompt | torch.Tensor) -> dict[str, float]:
        """Accuracy and cross entropy of one soft prompt (or embeds [L, H]) on labelled data: one call."""
        checked = self._encode(checked_examples(data, self.template.labels, "data", balanced=False))
        embeds = prompt.embeds if isinstance(prompt, SoftPrompt) else prompt
        loss, accuracy, _ = self._score("evaluate", embeds[None].float(), checked, "ce")
        return {"accuracy": float(accuracy[0]), "loss": float(loss[0])}

    # ------------------------------------------------------------ the search

    def fit(self, *, resume: bool = True) -> SoftPrompt:
        """Run CMA-ES until the budget is spent and return the selected soft prompt (resuming a checkpoint if any)."""
        from tqdm.auto import tqdm

        state = load_checkpoint(self.config, self._fingerprint()) if resume else None
        state = state or SearchState(es=new_strategy(self.config))
        self.history, self.dev_history = state.generations, state.dev
        started = time.perf_counter() - state.elapsed
        generations_left = self.config.budget // self.config.popsize - len(state.fitness)
        with tqdm(
            total=self.config.budget, initial=state.calls, unit="call", desc="BBT", disable=not self.config.progress
        ) as bar:
            for step in range(generations_left):
                self._generation(state, started, last=step == generations_left - 1)
                bar.update(self.config.popsize)
                bar.set_postfix(_postfix(state))
                if self.config.checkpoint_dir is not None and (step + 1) % self.config.checkpoint_every == 0:
                    self._save(state)
        if state.best is None:
            raise TuningError("the budget allows no generation beyond the checkpoint; raise budget to continue")
        if self.config.checkpoint_dir is not None:
            self._save(state)
        return self._result(state, state.best)

    def _generation(self, state: SearchState, started: float, *, last: bool) -> None:
        """Ask, score the population on the train set in one batched evaluation, tell; dev-evaluate when due."""
        solutions = state.es.ask()
        prompts = self.prompts(np.stack(solutions))
        losses, accuracy, tokens = self._score("train", prompts, self._train, self.config.loss)
        fitness = [float(v) for v in losses]
        state.es.tell(solutions, fitness)
        before, seconds = state.calls, time.perf_counter() - started
        winner = state.record_generation(fitness, calls=self.config.popsize, tokens=tokens, seconds=seconds)
        due = state.calls // self.config.dev_every > before // self.config.dev_every or last
        if due or self._dev is None:
            self._select(state, np.asarray(solutions[winner]), fitness[winner], float(accuracy[winner]), seconds)

    def _select(
        self, state: SearchState, z: np.ndarray, train_loss: float, train_accuracy: float, seconds: float
    ) -> None:
        """Dev-evaluate a candidate (when there is a dev set) and keep it if it beats the selected one."""
        dev_accuracy = dev_loss = None
        if self._dev is not None:
            loss, accuracy, tokens = self._score("dev", self.prompts(z[None]), self._dev, "ce")
            dev_accuracy, dev_loss = float(accuracy[0]), float(loss[0])
            state.record_dev(DevRecord(state.calls, dev_accuracy, dev_loss, seconds), tokens)
        state.offer(Best(z.copy(), train_loss, train_accuracy, dev_accuracy, dev_loss, state.calls, seconds))

    def _result(self, state: SearchState, best: Best) -> SoftPrompt:
        """The selected candidate as a SoftPrompt with its metadata and scores."""
        return SoftPrompt.create(
            self.prompts(best.z[None])[0].cpu(),
            z=torch.as_tensor(best.z, dtype=torch.float32),
            target=self.target,
            model_id=self.scorer.model_id,
            template=self.template.template,
            verbalizer=self.template.verbalizer,
            placement=self.config.placement,
            d=self.config.d,
            seed=self.config.seed,
            scores=state.scores(best),
            config=self.config.model_dump(mode="json"),
        )

    # ------------------------------------------------------------ checkpoints and reporting

    def _fingerprint(self) -> str:
        """What a checkpoint of this run must match to be resumed."""
        return fingerprint(self.config, self.scorer.model_id, self.template, self._train, self._dev)

    def _save(self, state: SearchState) -> None:
        """Write the checkpoint into checkpoint_dir."""
        save_checkpoint(Path(str(self.config.checkpoint_dir)), state, self._fingerprint())

    def plot(self, path: str | Path) -> Path:
        """Write a convergence plot (PNG): train loss per generation and best so far, dev accuracy; returns the path."""
        config = self.config
        title = f"BBT on {self.scorer.model_id}: d={config.d}, L={config.prompt_len}, {config.placement}"
        return plot_convergence(path, self.history, self.dev_history, loss=config.loss, title=title)


def _postfix(state: SearchState) -> dict[str, str]:
    """The progress bar's best train loss and best dev accuracy."""
    shown = {"loss": f"{state.generations[-1].best_so_far:.4f}"}
    if state.best is not None and state.best.dev_accuracy is not None:
        shown["dev_acc"] = f"{state.best.dev_accuracy:.3f}"
    return shown
