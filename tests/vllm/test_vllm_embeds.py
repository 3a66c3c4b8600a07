"""EmbedsEndpoint and Black-Box Tuning against a real vLLM server started with --enable-prompt-embeds.

The server is vLLM from its own virtual environment (BLACKBOX_VLLM_PYTHON; see conftest.py), serving
the packaged SmolLM2 written out as safetensors; the local `hf:` backend on the same GGUF is the
reference. Run by scripts/vllm_check.sh.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import torch

import blackbox_sdk
from blackbox_sdk._exceptions import BackendError
from blackbox_sdk.local import HFBackend, load_backend
from blackbox_sdk.tuning import (
    BBTConfig,
    EmbedsEndpoint,
    LocalScorer,
    PromptTemplate,
    Tuner,
    VLLMServer,
    encode_embeds,
)

TASK = Path(__file__).resolve().parents[2] / "benchmarks" / "tasks" / "bbt_sentiment.jsonl"
TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TEXTS = ["A warm and funny film, I loved it.", "The battery died in an hour, awful.", "Plain, forgettable, fine."]
PATCHED = (0, 11, 1)  # CVE-2025-62164: crafted prompt_embeds tensors; fixed in 0.11.1


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> HFBackend:
    """The local backend on the same GGUF: the reference, and the embedding table the client embeds with."""
    torch.set_num_threads(1)  # the server has the other core
    return load_backend(gguf_path)


def endpoint(backend: HFBackend, server: VLLMServer, **options: Any) -> EmbedsEndpoint:
    """An EmbedsEndpoint on the real server."""
    return EmbedsEndpoint(
        server.base_url, model=server.name, embedding_table_source=backend, supports_prompt_embeds=True, **options
    )


def split(name: str, per_label: int) -> list[tuple[str, str]]:
    """The first per_label examples of each label in one split of the shipped sentiment task."""
    rows = [json.loads(line) for line in TASK.read_text().splitlines()]
    picked: list[tuple[str, str]] = []
    for label in VERBALIZER:
        picked += [(r["text"], r["label"]) for r in rows if r["split"] == name and r["label"] == label][:per_label]
    return picked


def test_the_server_is_a_vllm_with_the_prompt_embeds_fix(vllm_server: VLLMServer) -> None:
    version = httpx2.get(vllm_server.base_url.removesuffix("/v1") + "/version", timeout=10).json()["version"]
    print(f"\nvLLM {version}")
    assert tuple(int(part) for part in version.split("+")[0].split(".")[:3]) >= PATCHED


@pytest.mark.parametrize(("wire_dtype", "tolerance"), [("float32", 2e-3), ("bfloat16", 0.08)])
@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_label_logprobs_match_the_local_model(
    backend: HFBackend, vllm_server: VLLMServer, wire_dtype: str, tolerance: float, placement: str
) -> None:
    remote = endpoint(backend, vllm_server, wire_dtype=wire_dtype, batch_size=4)
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, placement)
    examples = template.encode(TEXTS)
    prompts = torch.randn(2, 3, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    there = remote.label_logprobs(prompts, examples, template.label_token_ids)
    here = LocalScorer(backend).label_logprobs(prompts, examples, template.label_token_ids)
    assert there.shape == here.shape == (2, 3, 2)
    assert torch.allclose(there, here, atol=tolerance), (there - here).abs().max()  # exact labels, no top-k stand-in
    assert torch.equal(there.argmax(-1), here.argmax(-1))


def test_an_empty_text_prompt_beside_the_embeddings_is_refused(backend: HFBackend, vllm_server: VLLMServer) -> None:
    """Why the endpoint leaves `prompt` out: vLLM reads "" as one more prompt, an empty one."""
    body = {"model": "smollm2", "prompt": "", "prompt_embeds": [encode_embeds(torch.zeros(3, 576))], "max_tokens": 1}
    answer = httpx2.post(f"{vllm_server.base_url}/completions", json=body, timeout=60)
    assert answer.status_code == 400 and "empty" in answer.text


def test_a_crafted_sparse_tensor_is_refused_and_the_server_keeps_answering(
    backend: HFBackend, vllm_server: VLLMServer
) -> None:
    """CVE-2025-62164: an out-of-bounds sparse tensor in prompt_embeds; a patched server answers 400."""
    crafted = torch.sparse_coo_tensor(
        torch.tensor([[0, 10**6], [0, 0]]), torch.ones(2), (4, 576), check_invariants=False
    )
    buffer = io.BytesIO()
    torch.save(crafted, buffer)
    body = {"model": "smollm2", "prompt_embeds": [base64.b64encode(buffer.getvalue()).decode()], "max_tokens": 1}
    answer = httpx2.post(f"{vllm_server.base_url}/completions", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    remote = endpoint(backend, vllm_server)
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    assert remote.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS[:1]), template.label_token_ids).isfinite().all()


def test_bbt_tuned_over_http_matches_the_local_run_and_is_served_by_create(
    backend: HFBackend, vllm_server: VLLMServer
) -> None:
    train, dev, test = split("train", 8), split("dev", 8), split("test", 30)
    config = BBTConfig(d=50, prompt_len=4, popsize=10, budget=60, dev_every=20, placement="suffix", progress=False)
    remote = endpoint(backend, vllm_server, batch_size=64)
    runs: dict[str, dict[str, Any]] = {}
    for name, target in (("vllm", remote), ("local", backend)):
        tuner = Tuner(target, template=TEMPLATE, verbalizer=VERBALIZER, train=train, dev=dev, config=config)
        began = time.monotonic()
        prompt = tuner.fit()
        runs[name] = {"prompt": prompt, "seconds": time.monotonic() - began, "history": tuner.history}
        runs[name]["test"] = tuner.evaluate(test, prompt)["accuracy"]
    print(
        "\nBBT d=50 L=4 suffix, 60 calls, 8 per label:"
        + "".join(f" {n}: test {r['test']:.3f} in {r['seconds']:.0f} s;" for n, r in runs.items())
    )
    first_remote, first_local = runs["vllm"]["history"][0], runs["local"]["history"][0]
    assert first_remote.best_loss == pytest.approx(first_local.best_loss, abs=1e-3)  # same candidates, same losses
    assert first_remote.mean_loss == pytest.approx(first_local.mean_loss, abs=1e-3)
    assert abs(runs["vllm"]["test"] - runs["local"]["test"]) <= 0.1  # 60 test sentences: within noise
    assert runs["vllm"]["test"] >= 0.7

    tuned = runs["vllm"]["prompt"]
    texts = [text for text, _ in test]
    budget = blackbox_sdk.Budget(total_usd=100.0, prices={remote.model_id: {"input": 1.0, "output": 1.0}})
    client = blackbox_sdk.OpenAI(base_url=vllm_server.base_url, api_key="sk-none", budget=budget)
    completion = client.completions.create(**remote.completion_params(tuned, texts))
    # the budget counts the embeds' tokens as vLLM does: no hidden tokens learnt, the spend is the server's usage
    assert budget.calibration.overhead(f"{client.base_url}#completions", remote.model_id) == 0
    assert budget.spent() == pytest.approx(completion.usage.total_tokens / 1e6)
    served = remote.read_labels(tuned, completion, texts)
    classified = tuned.classify(texts)
    assert [label for label, _ in served] == [label for label, _ in classified]
    for (_, mine), (_, theirs) in zip(served, classified, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-4)
    assert sum(label == truth for (label, _), (_, truth) in zip(served, test, strict=True)) / len(test) == pytest.approx(
        runs["vllm"]["test"]
    )


def test_server_errors_surface_as_backend_errors(backend: HFBackend, vllm_server: VLLMServer) -> None:
    wrong = EmbedsEndpoint(
        vllm_server.base_url, model="no-such-model", embedding_table_source=backend, supports_prompt_embeds=True
    )
    template = PromptTemplate(TEMPLATE, VERBALIZER, backend.tokenizer, "suffix")
    with pytest.raises(BackendError, match="404"):
        wrong.label_logprobs(torch.zeros(1, 1, 576), template.encode(TEXTS[:1]), template.label_token_ids)


def test_the_example_tunes_and_serves_over_the_server(vllm_server: VLLMServer, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "bbt_vllm.py"
    result = subprocess.run(
        [sys.executable, str(example), "--base-url", vllm_server.base_url, "--budget", "20"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    served = [line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("create")]
    classified = [line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("classify")]
    assert len(served) == 2 and served == classified
