"""Black-Box Tuning (Sun et al., ICML 2022): search a soft prompt with CMA-ES, forward calls only.

The search runs in z in R^d; the soft prompt is `p = A z + p0` (L vectors of the model's hidden
size H; see `_projection`). Each CMA-ES generation scores the whole population on the training set
in batched forwards (popsize x examples sequences, no gradients) and reads only the verbalizer
tokens' log-probs at the answer position. With `deep=True` (BBTv2, Sun et al., EMNLP 2022) every
decoder layer gets its own L vectors, added to the hidden state at the prompt positions, each from
its own z and A; one CMA-ES per layer searches in turn, the others held at their best (`_cma`).

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
from ._checkpoint import fingerprint, load_checkpoint, prepare_folder, save_checkpoint
from ._cma import LayerSearch
from ._config import BBTConfig
from ._examples import Example, checked_examples
from ._local_scorer import LocalScorer
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
        if config is not None and not isinstance(config, BBTConfig):
            raise TuningError(f"config must be a BBTConfig, got {type(config).__name__}")
        self.config = config or BBTConfig()
        self.target = target
        self.scorer: PromptScorer = resolve_target(target, batch_size=self.config.batch_size)
        if self.config.deep and not isinstance(self.scorer, LocalScorer):
            raise TuningError(
                "a deep prompt (deep=True) adds vectors inside the model's layers, which an HTTP embeddings "
                "endpoint can't take: tune a local model (an HFBackend or a client with base_url='hf:...')"
            )
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
        # the scale of each prompt layer's A: the word embeddings', then (deep) the hidden states'
        self.layer_stds = [self.std_e, *(self._hidden_stds() if self.config.deep else [])]
        c = self.config
        self.projection = torch.stack([
            build_projection(c.d, c.prompt_len, self.hidden, std_e=std, alpha=c.alpha, sigma=c.sigma0, seed=c.seed, layer=layer)
            for layer, std in enumerate(self.layer_stds)
        ]).to(self.scorer.device)  # [n, L*H, d]: n = 1, or one per decoder layer for a deep prompt
        self.history: list[GenerationRecord] = []
        self.dev_history: list[DevRecord] = []
        self._state: SearchState | None = None  # the last fit's, kept so best_prompt outlives a fit that raised

    def _encode(self, data: Sequence[Example]) -> EncodedExamples:
        """Token ids and class indexes of a checked data set."""
        return self.template.encode([t for t, _ in data], [y for _, y in data])

    def _hidden_stds(self) -> list[float]:
        """The std of the hidden state entering each layer after the first: one forward over the training set, one call."""
        assert isinstance(self.scorer, LocalScorer)  # deep=True was checked against the target above
        tokens = self.scorer.tokens_sent(0, self._train)
        if self.on_calls is not None:
            self.on_calls(1, tokens)
        with self._metered("evaluate", 1, len(self._train), 0, tokens):
            return self.scorer.hidden_stds(self._train)[1:]

    # ------------------------------------------------------------ scoring

    @property
    def layers(self) -> int:
        """Prompt layers searched: 1, or the model's decoder layers for a deep prompt."""
        return int(self.projection.shape[0])

    def prompts(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Soft prompts [P, n, L, H] (float32) for search points z [P, n, d] (or [P, d] when n = 1): A_l z_l, plus p0 at layer 0."""
        zs = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.scorer.device)
        zs = zs.reshape(-1, self.layers, self.config.d)  # [P, n, d]
        flat = torch.einsum("pnd,nkd->pnk", zs, self.projection)  # [P, n, L*H]
        out = flat.reshape(-1, self.layers, self.config.prompt_len, self.hidden)
        out[:, 0] += self.p0
        return out

    def _score(
        self, kind: EvaluationKind, prompts: torch.Tensor, examples: EncodedExamples, loss: str
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss [P], accuracy [P], tokens billed) of one evaluation of prompts [P, n, L, H]: P calls, hook, meter."""
        calls, prompt_len = int(prompts.shape[0]), int(prompts.shape[2])
        tokens = calls * self.scorer.tokens_sent(prompt_len, examples)
        if self.on_calls is not None:
            self.on_calls(calls, tokens)
        deep = {"layers": prompts[:, 1:]} if prompts.shape[1] > 1 else {}  # only a LocalScorer is given layers
        with self._metered(kind, calls, len(examples), prompt_len, tokens):
            logprobs = self.scorer.label_logprobs(prompts[:, 0], examples, self.template.label_token_ids, **deep)
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
        """(loss [P], accuracy [P]) of search points z [P, n, d] on the training set: one batched evaluation, P calls."""
        shape, n, d = tuple(np.shape(z)), self.layers, self.config.d
        if not (len(shape) in (2, 3) and shape[0] > 0 and shape[1:] in {(n, d), (d,) if n == 1 else (n, d)}):
            want = f"[P, {d}] or [P, 1, {d}]" if n == 1 else f"[P, {n}, {d}]"
            raise TuningError(f"search points must be {want} with P >= 1, got {list(shape)}")
        loss, accuracy, _ = self._score("train", self.prompts(z), self._train, self.config.loss)
        return loss, accuracy

    def evaluate(self, data: Sequence[Example], prompt: SoftPrompt | torch.Tensor) -> dict[str, float]:
        """Accuracy and cross entropy of one soft prompt (or its vectors [n, L, H], or [L, H]) on labelled data: one call."""
        checked = self._encode(checked_examples(data, self.template.labels, "data", balanced=False))
        vectors = prompt.stacked() if isinstance(prompt, SoftPrompt) else prompt
        want = [self.config.prompt_len, self.hidden]
        if vectors.ndim not in (2, 3) or list(vectors.shape[-2:]) != want:
            layered = [self.layers, *want]
            raise TuningError(f"this run's prompts are {want} (or {layered} with layers), got {list(vectors.shape)}")
        vectors = vectors.reshape(-1, *want).to(self.scorer.device)  # [n, L, H]
        if vectors.shape[0] != self.layers:
            raise TuningError(f"this run's prompts have {self.layers} layer(s), the one given has {vectors.shape[0]}")
        loss, accuracy, _ = self._score("evaluate", vectors[None].float(), checked, "ce")
        return {"accuracy": float(accuracy[0]), "loss": float(loss[0])}

    # ------------------------------------------------------------ the search

    def fit(self, *, resume: bool = True) -> SoftPrompt:
        """Run CMA-ES until the budget is spent and return the selected soft prompt (resuming a checkpoint if any)."""
        from tqdm.auto import tqdm

        self._state = None
        if self.config.checkpoint_dir is not None:
            prepare_folder(Path(str(self.config.checkpoint_dir)))
        state = load_checkpoint(self.config, self._fingerprint(), self.layers) if resume else None
        state = state or SearchState(search=LayerSearch(self.config, self.layers))
        self.history, self.dev_history, self._state = state.generations, state.dev, state
        started = time.perf_counter() - state.elapsed
        generations_left = self.config.budget // self.config.popsize - len(state.fitness)
        with tqdm(
            total=self.config.budget, initial=state.calls, unit="call", desc="BBT", disable=not self.config.progress
        ) as bar:
            try:
                for step in range(generations_left):
                    self._generation(state, started, last=step == generations_left - 1)
                    bar.update(self.config.popsize)
                    bar.set_postfix(_postfix(state))
                    if self.config.checkpoint_dir is not None and (step + 1) % self.config.checkpoint_every == 0:
                        self._save(state)
            except BaseException:
                if self.config.checkpoint_dir is not None:  # a refusal or failure keeps the generations paid for
                    self._save(state)
                raise
        if state.best is None:
            raise TuningError("the budget allows no generation beyond the checkpoint; raise budget to continue")
        if self.config.checkpoint_dir is not None:
            self._save(state)
        return self._result(state, state.best)

    @property
    def best_prompt(self) -> SoftPrompt | None:
        """The prompt the last fit selected so far (None before one), kept when a budget refusal or error stops the fit."""
        state = self._state
        return None if state is None or state.best is None else self._result(state, state.best)

    def _generation(self, state: SearchState, started: float, *, last: bool) -> None:
        """Ask, score the population on the train set in one batched evaluation, tell; dev-evaluate when due."""
        solutions, candidates = state.search.ask()  # candidates [P, n, d]
        losses, accuracy, tokens = self._score("train", self.prompts(candidates), self._train, self.config.loss)
        fitness = [float(v) for v in losses]
        state.search.tell(solutions, fitness)
        before, seconds = state.calls, time.perf_counter() - started
        winner = state.record_generation(fitness, calls=self.config.popsize, tokens=tokens, seconds=seconds)
        due = state.calls // self.config.dev_every > before // self.config.dev_every or last
        if due or self._dev is None:
            self._select(state, candidates[winner], fitness[winner], float(accuracy[winner]), seconds)

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
        vectors = self.prompts(best.z[None])[0].cpu()  # [n, L, H]
        return SoftPrompt.create(
            vectors[0],
            layers=vectors[1:] if self.layers > 1 else None,
            z=torch.as_tensor(best.z, dtype=torch.float32).squeeze(0),
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
        return fingerprint(self.config, self.scorer.model_id, self.template, self._train, self._dev, self.p0)

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
