"""How fast can an adapter score, and does a faster path rank the same? `python benchmarks/run.py adapter_speed [--quick]`.

Side by side in one run, on the same machine and the same held-out candidates (the task suite's
40 held-out questions per task, 8 candidates each: the reference answer and 7 wrong answers in
the same form, taken from other questions), for each shipped adapter's encoder:

    plain fp32        a plain transformers forward in fp32: batches of 64 in arrival order (the baseline)
    bucketed fp32     the SDK's torch path: batches of 64, longest texts first (less padding)
    bf16 autocast     the same under CPU bf16 autocast (the path a GPU takes)
    int8 dynamic      torch.ao.quantization.quantize_dynamic on every nn.Linear, bucketed
    onnxruntime fp32  `Adapter.load(..., fast=True)`: the model exported with torch.onnx, ONNX Runtime, bucketed
    onnxruntime int8 weights  `fast="int8"`: that export with the encoder's weights in blockwise int8 (MatMulNBits)
    prefix once       not measured: the encoders attend both ways, so the question's tokens depend on the answer's

Two regimes: `bulk` scores all candidates in batches of 64; `per call` scores each question's 8
candidates as one call, as the client's reranker does. Each option's time is the median of 3
interleaved repetitions (the machine is shared); Spearman and top-1 agreement are against plain fp32's
scores. On a GPU (when there is one) it adds rows there: plain fp32 and bf16 autocast batched by 256,
and the SDK's own `Adapter.load(folder, device="cuda")` (precision "auto": bf16 autocast, the folder's
batch size, longest first); the bulk regime scores the candidates GPU_REPEAT times over (10,240
texts), so that the GPU's rate is not one kernel launch's. Last, what reranking adds
to a real call: SmolLM2-135M behind llama.cpp's server (started here), K = 8 samples, the
reranker's own time inside the call against the median call for the same 8 samples without a
reranker (the SDK's client with n = 8, which the server ignores, so it fans out 8 seeded requests
as the reranking client does), and the median wall-clock difference of the two calls for the same
question (`added`); the calls alternate, each going first for every other question.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tasks.suite import TASKS, split

SHIPPED = HERE.parent / "adapters"
HELD_OUT = 40
CANDIDATES = 8
REPEATS = 3
GPU_REPEAT = 32  # the bulk regime on a GPU scores 40 x 8 candidates 32 times over
Scorer = Callable[[list[str]], list[float]]


def candidates(task_name: str, questions: int) -> list[tuple[str, str]]:
    """(question, answer) pairs: per held-out question its reference and 7 wrong answers in the same form."""
    task = next(t for t in TASKS if t.name == task_name)
    _, held = split(task, 0, HELD_OUT)
    held = held[:questions]
    pairs = []
    for i, item in enumerate(held):
        head = item.reference.rsplit(" is ", 1)[0]
        for j in range(CANDIDATES):
            other = held[(i + j) % len(held)].reference
            answer = other if task_name == "comparison" else f"{head} is {other.rsplit(' is ', 1)[1]}"
            pairs.append((item.question, item.reference if j == 0 else answer))
    return pairs


def ranks(values: list[float]) -> list[float]:
    """Ranks (1-based, ties averaged)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two score lists."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def top1_agreement(a: list[float], b: list[float]) -> float:
    """Share of questions (runs of CANDIDATES) whose best candidate is the same under both scores."""
    same = 0
    for s in range(0, len(a), CANDIDATES):
        pick = lambda v: max(range(s, s + CANDIDATES), key=v.__getitem__)  # noqa: E731
        same += pick(a) == pick(b)
    return same / (len(a) // CANDIDATES)


def plain_scorer(adapter: Any, batch: int, device: str = "cpu", autocast_dtype: Any = None) -> Scorer:
    """A plain transformers forward: batches in arrival order, inference mode (optionally under autocast)."""
    import torch

    adapter.model.eval()  # no dropout

    def run(texts: list[str]) -> list[float]:
        out: list[float] = []
        for s in range(0, len(texts), batch):
            enc = adapter.tokenizer(texts[s : s + batch], padding=True, truncation=True, max_length=adapter.config.max_length, return_tensors="pt").to(device)
            with torch.inference_mode(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out += adapter.model(enc["input_ids"], enc["attention_mask"]).float().tolist()
        return out

    return run


def int8_scorer(adapter: Any) -> Scorer:
    """Dynamic int8 quantization of every nn.Linear (of a copy of the model, a LoRA adapter's deltas
    merged into it first), batches longest first."""
    import torch

    from blackbox_sdk.adapter._fast import in_length_order, merged_copy

    model = merged_copy(adapter.model, adapter.lora_name).eval()
    with warnings.catch_warnings():  # torch >= 2.10 says torch.ao.quantization moves to torchao; it still runs
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # quantizes a copy
    twin = copy.copy(adapter)
    twin.model, twin.base, twin.lora_name = quantized, None, None
    return lambda texts: in_length_order(texts, adapter.config.score_batch_size, twin._torch_batch)


def options(folder: Path) -> dict[str, Scorer]:
    """Every CPU scoring option for the adapter in `folder`, by name (loading and exporting happen here, untimed)."""
    from blackbox_sdk.adapter import Adapter

    adapter = Adapter.load(folder, device="cpu", shared=False)
    bf16 = Adapter.load(folder, device="cpu", shared=False, precision="bf16")
    fast = Adapter.load(folder, device="cpu", shared=False, fast=True)
    int8 = Adapter.load(folder, device="cpu", shared=False, fast="int8")
    return {
        "plain fp32": plain_scorer(adapter, 64),
        "bucketed fp32": adapter.score_texts,
        "bf16 autocast": bf16.score_texts,
        "int8 dynamic": int8_scorer(adapter),
        "onnxruntime fp32": fast.score_texts,
        "onnxruntime int8 weights": int8.score_texts,
    }


def timed(scorer: Scorer, texts: list[str], per_call: bool) -> tuple[list[float], float]:
    """Scores of all texts and the seconds it took, in one bulk pass or one call per question."""
    started = time.perf_counter()
    if per_call:
        scores = [x for s in range(0, len(texts), CANDIDATES) for x in scorer(texts[s : s + CANDIDATES])]
    else:
        scores = scorer(texts)
    return scores, time.perf_counter() - started


def measure(name: str, folder: Path, questions: int, device: str = "cpu") -> list[dict[str, Any]]:
    """The table's rows for one adapter: each option in each regime, against plain fp32."""
    import torch

    from blackbox_sdk.adapter import Adapter

    pairs = candidates(name, questions)
    if device == "cpu":
        scorers = options(folder)
    else:
        gpu = Adapter.load(folder, device=device, shared=False)  # precision "auto": bf16 autocast on a GPU
        scorers = {
            "plain fp32": plain_scorer(gpu, 256, device),
            "bf16 batched": plain_scorer(gpu, 256, device, torch.bfloat16),
            "the SDK's Adapter (auto: bf16)": gpu.score_texts,
        }
    config = Adapter.load(folder, device="cpu", shared=False).config
    texts = [config.render(q, a) for q, a in pairs]
    rows = []
    for per_call in (False, True):
        scored = texts if per_call or device == "cpu" else texts * GPU_REPEAT
        for scorer in scorers.values():
            scorer(texts[:CANDIDATES])  # warm-up
        runs: dict[str, list[float]] = {k: [] for k in scorers}
        scores: dict[str, list[float]] = {}
        for _ in range(REPEATS):
            for key, scorer in scorers.items():
                all_scores, seconds = timed(scorer, scored, per_call)
                scores[key] = all_scores[: len(texts)]
                runs[key].append(seconds)
        base = len(scored) / statistics.median(runs["plain fp32"])
        for key in scorers:
            rate = len(scored) / statistics.median(runs[key])
            rows.append({
                "adapter": name, "encoder": config.base_model, "device": device, "regime": "per call" if per_call else "bulk",
                "option": key, "candidates_per_s": round(rate, 1), "speedup": round(rate / base, 2),
                "spearman": round(spearman(scores["plain fp32"], scores[key]), 5),
                "top1_agree": round(top1_agreement(scores["plain fp32"], scores[key]), 3),
            })
    return rows


def latency_rows(name: str, questions: int) -> list[dict[str, Any]]:
    """What reranking adds to a real call: llama.cpp's server, K = 8 samples with and without the reranker.

    Both clients are the SDK's and ask for the same 8 samples (the server ignores `n`, so each fans
    out 8 requests with seeds seed..seed+7); the reranker's own time is measured inside the call."""
    from blackbox_sdk import OpenAI
    from blackbox_sdk.adapter import Adapter
    from blackbox_sdk.local import LlamaServer

    task = next(t for t in TASKS if t.name == name)
    _, held = split(task, 0, HELD_OUT)
    sampling: dict[str, Any] = {"model": "smollm2", "temperature": 0.9, "max_tokens": 16, "stop": ["\n"]}
    out = []
    with LlamaServer() as base_url:
        plain = OpenAI(base_url=base_url, api_key="local")
        for option, fast in (("bucketed fp32", False), ("onnxruntime fp32", True), ("onnxruntime int8 weights", "int8")):
            adapter = Adapter.load(SHIPPED / name, device="cpu", shared=False, fast=fast)
            spent: list[float] = []
            distinct: list[int] = []

            def timed_score(question: str, answers: list[str], adapter: Any = adapter, spent: list[float] = spent, distinct: list[int] = distinct) -> list[float]:
                started = time.perf_counter()
                scores = adapter.score(question, answers)
                spent.append(time.perf_counter() - started)
                distinct.append(len(set(answers)))
                return scores

            client = OpenAI(base_url=base_url, api_key="local", reranker=timed_score, rerank_n=CANDIDATES)
            with_rerank, without = [], []
            for seed, item in enumerate(held[:questions]):  # alternating which goes first, so both see the same load and server cache
                messages = [*task.messages(), {"role": "user", "content": item.question}]
                pair = [(client, {}, with_rerank), (plain, {"n": CANDIDATES}, without)]
                for sender, extra, times in pair if seed % 2 == 0 else pair[::-1]:
                    started = time.perf_counter()
                    sender.chat.completions.create(messages=messages, seed=CANDIDATES * seed, **extra, **sampling)
                    times.append(time.perf_counter() - started)
            call = statistics.median(without)
            added = statistics.median(w - o for w, o in zip(with_rerank, without))
            out.append({
                "adapter": name, "encoder": adapter.config.base_model, "device": "cpu", "regime": "llama.cpp call, K=8",
                "option": option, "call_ms_without": round(1000 * call), "call_ms_with": round(1000 * statistics.median(with_rerank)),
                "rerank_ms": round(1000 * statistics.median(spent), 1), "rerank_share": round(statistics.median(spent) / call, 4),
                "added_ms": round(1000 * added), "added_share": round(added / call, 4), "distinct_answers": statistics.median(distinct),
            })
    return out


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The speed table: MiniLM (the comparison adapter) always, mpnet (capitals) unless --quick; GPU rows when there is one."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)) if quick else torch.get_num_threads())
    chosen = ["comparison"] if quick else ["comparison", "capitals"]
    questions = 12 if quick else HELD_OUT
    out = [row for name in chosen for row in measure(name, SHIPPED / name, questions)]
    if torch.cuda.is_available():
        out += [row for name in chosen for row in measure(name, SHIPPED / name, HELD_OUT, device="cuda")]
    out += [row for name in chosen for row in latency_rows(name, 4 if quick else 12)]
    out.append({"adapter": "any", "option": "prefix once", "regime": "not measured: bidirectional encoders (BERT, MPNet) give the question's tokens states that depend on the answer"})
    return out


def folder_rows(name: str, folder: Path) -> list[dict[str, Any]]:
    """One adapter folder's CPU rows and, when there is a GPU, its GPU rows (the device check, scripts/gpu_check.sh)."""
    import torch

    out = measure(name, folder, HELD_OUT)
    if torch.cuda.is_available():
        out += measure(name, folder, HELD_OUT, device="cuda")
    else:
        out.append({"adapter": name, "device": "cuda", "option": "no GPU here: torch.cuda.is_available() is False"})
    return out


if __name__ == "__main__":
    import json

    from run import markdown_table

    if "--folder" in sys.argv:  # python benchmarks/bench_adapter_speed.py --folder DIR --task NAME [--json FILE]
        arg = sys.argv.index
        table = folder_rows(sys.argv[arg("--task") + 1], Path(sys.argv[arg("--folder") + 1]))
        if "--json" in sys.argv:
            Path(sys.argv[arg("--json") + 1]).write_text(json.dumps(table, indent=2) + "\n")
    else:
        table = rows(quick="--quick" in sys.argv)
    print(markdown_table(table))
