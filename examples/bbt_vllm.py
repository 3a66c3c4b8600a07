"""Black-Box Tuning over HTTP: a soft prompt tuned on a vLLM server through `prompt_embeds`, then served by `create`.

Run it:  python examples/bbt_vllm.py --base-url http://HOST:PORT/v1 [--model NAME]
   or:   python examples/bbt_vllm.py --vllm-python .venv-vllm/bin/python   (starts a server itself)

The server must be vLLM >= 0.11.1 started with `--enable-prompt-embeds` on SmolLM2-135M-Instruct
(`scripts/vllm_env.sh` makes .venv-vllm; with `--vllm-python` this example writes the packaged GGUF
out as a safetensors folder and starts `python -m vllm.entrypoints.openai.api_server` on it). The
client embeds every token itself with the packaged model's embedding table, so only forward calls
reach the server. Not numbered: the suite runs every numbered example, and this one needs vLLM's
own environment; scripts/vllm_check.sh runs it.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

import blackbox_sdk
from blackbox_sdk.local import default_gguf_path, load_backend
from blackbox_sdk.tuning import (
    BBTConfig,
    EmbedsEndpoint,
    Tuner,
    VLLMServer,
    export_hf_folder,
)

TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TRAIN = [
    ("A warm, funny film that left the whole theater smiling.", "positive"),
    ("These headphones sound amazing for the price.", "positive"),
    ("The acting is superb and the story never drags.", "positive"),
    ("Fast shipping and the lamp looks even better in person.", "positive"),
    ("A dull, lifeless film that put me to sleep.", "negative"),
    ("These headphones broke within a week.", "negative"),
    ("The acting is wooden and the story drags endlessly.", "negative"),
    ("The lamp arrived broken and customer service ignored me.", "negative"),
]
DEV = [
    ("The blender is powerful, quiet and easy to clean.", "positive"),
    ("A gripping plot with a brilliant final twist.", "positive"),
    ("The blender is loud, weak and impossible to clean.", "negative"),
    ("A predictable plot with a silly, pointless twist.", "negative"),
]
NEW = ["My new shoes are comfortable right out of the box.", "The suitcase wheel snapped off on the first trip."]


def main() -> None:
    """Tune over HTTP, classify with the tuned prompt, and serve it through an OpenAI client's create."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="a running vLLM server's /v1 URL (started with --enable-prompt-embeds)")
    where.add_argument("--vllm-python", type=Path, help="the Python of a virtual environment with vLLM: start one here")
    parser.add_argument("--model", default="smollm2", help="the served model name")
    parser.add_argument("--budget", type=int, default=60, help="training calls (one call = one candidate on the train set)")
    args = parser.parse_args()

    local = load_backend(default_gguf_path())  # its embedding table and tokenizer: the client embeds every token
    with ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            folder = export_hf_folder(default_gguf_path(), Path(tempfile.mkdtemp(prefix="smollm2-")) / "model")
            base_url = stack.enter_context(VLLMServer(folder, python=args.vllm_python, name=args.model))
            print(f"started vLLM at {base_url}")
        vllm = EmbedsEndpoint(base_url, model=args.model, embedding_table_source=local, supports_prompt_embeds=True)
        config = BBTConfig(d=50, prompt_len=4, popsize=10, budget=args.budget, dev_every=20, placement="suffix")
        tuner = Tuner(vllm, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=config)
        prompt = tuner.fit()  # every candidate is a batch of prompt_embeds requests to the server
        print(f"tuned over HTTP: {config.budget} calls, dev accuracy {prompt.info.scores.get('dev_accuracy')}")
        for text, (label, probs) in zip(NEW, prompt.classify(NEW), strict=True):
            print(f"  classify  {label:8s} {probs[label]:.2f}  {text}")

        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="sk-none")  # any OpenAI client serves it
        completion = client.completions.create(**vllm.completion_params(prompt, NEW))
        for text, (label, probs) in zip(NEW, vllm.read_labels(prompt, completion, NEW), strict=True):
            print(f"  create    {label:8s} {probs[label]:.2f}  {text}")


if __name__ == "__main__":
    main()
