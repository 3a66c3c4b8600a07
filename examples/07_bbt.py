"""Example 7: Black-Box Tuning — a soft prompt found by CMA-ES with forward calls only, then served.

Run it:  python examples/07_bbt.py [--dir FOLDER] [--budget CALLS]

It tunes a 2-vector soft prompt for sentiment on the packaged SmolLM2 (a few labelled sentences,
a small budget so it finishes in a minute or two on a CPU), counts the calls through the
`on_calls` hook, writes the convergence plot, saves the prompt (safetensors + JSON), loads it
back, classifies new sentences with it, and serves it: the client's `create(..., soft_prompt=...)`
prepends it to the request's input.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import blackbox_sdk
from blackbox_sdk.tuning import BBTConfig, SoftPrompt, Tuner

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
    """Tune, plot, save, load, classify and serve a soft prompt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the prompt and plot (default: a temp folder)"
    )
    parser.add_argument(
        "--budget", type=int, default=100, help="training calls (one call = one candidate on the train set)"
    )
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bbt-"))
    folder.mkdir(parents=True, exist_ok=True)

    client = blackbox_sdk.OpenAI(base_url="hf:default")  # the packaged SmolLM2, run locally
    spent = {"calls": 0, "tokens": 0}

    def count(calls: int, tokens: int) -> None:
        """Where a budget or a call log would be told about every evaluation, before it runs."""
        spent["calls"] += calls
        spent["tokens"] += tokens

    config = BBTConfig(
        d=20, prompt_len=2, popsize=10, budget=args.budget, dev_every=20, placement="prefix", progress=False
    )
    tuner = Tuner(client, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=config, on_calls=count)
    start = tuner.evaluate(TRAIN, tuner.p0)
    prompt = tuner.fit()
    scores = prompt.info.scores
    print(f"train loss {start['loss']:.3f} -> {scores['train_loss']:.3f}; dev accuracy {scores['dev_accuracy']:.2f}")
    print(
        f"{spent['calls']} calls ({int(scores['calls'])} training, {int(scores['dev_calls'])} dev), "
        f"{spent['tokens']} prompt tokens"
    )
    print("convergence plot:", tuner.plot(folder / "bbt.png"))

    saved = prompt.save(folder / "prompt")
    loaded = SoftPrompt.load(saved)
    print("saved:", sorted(p.name for p in saved.iterdir()), "as", loaded.name)
    for text, (label, probs) in zip(NEW, loaded.classify(NEW, client), strict=True):
        print(f"{label:>8}  p={probs[label]:.2f}  {text}")

    completion = client.completions.create(  # a prefix prompt is served by prepending it to the input
        model="smollm2",
        prompt=TEMPLATE.split("{label}")[0].format(text=NEW[0]).rstrip(),
        max_tokens=1,
        temperature=0,
        soft_prompt=loaded,
    )
    print("served with the prompt, next word:", repr(completion.choices[0].text))


if __name__ == "__main__":
    main()
