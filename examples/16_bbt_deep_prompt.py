"""Example 16: a deep soft prompt (BBTv2) — vectors inside every layer, one CMA-ES per layer in turn.

Run it:  python examples/16_bbt_deep_prompt.py [--dir FOLDER] [--budget CALLS]

It tunes a plain 2-vector prompt and a deep one (2 vectors at each of SmolLM2's 30 layers) for
sentiment on the packaged model with the same small budget, prints both training losses and dev
accuracies side by side, then saves the deep prompt, loads it back and classifies new sentences
with it. A deep prompt runs on local models only: a request to an HTTP server carries input
vectors, not vectors inside the layers, so the client refuses it as `soft_prompt=`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import blackbox_sdk
from blackbox_sdk import ConfigError
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
    """Tune a plain and a deep prompt on the same budget, then save, load and classify with the deep one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the prompt (default: a temp folder)")
    parser.add_argument("--budget", type=int, default=100, help="training calls for each of the two prompts")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bbt-deep-"))

    client = blackbox_sdk.OpenAI(base_url="hf:default")  # the packaged SmolLM2, run locally
    base = BBTConfig(d=20, prompt_len=2, popsize=10, budget=args.budget, dev_every=20, placement="suffix", progress=False)
    prompts = {}
    for name, config in (("plain", base), ("deep", base.model_copy(update={"deep": True, "sigma0": 0.2, "alpha": 0.2}))):
        tuner = Tuner(client, template=TEMPLATE, verbalizer=VERBALIZER, train=TRAIN, dev=DEV, config=config)
        prompts[name] = tuner.fit()
        scores = prompts[name].info.scores
        print(
            f"{name:>5}: {tuner.layers:2d} layer(s) of 2 vectors, {int(scores['calls'])} calls, "
            f"train loss {scores['train_loss']:.3f}, dev accuracy {scores['dev_accuracy']:.2f}"
        )

    saved = prompts["deep"].save(folder / "deep")
    loaded = SoftPrompt.load(saved, target=client)
    print("saved:", sorted(p.name for p in saved.iterdir()), "with layers", list(loaded.layers.shape))
    for text, (label, probs) in zip(NEW, loaded.classify(NEW), strict=True):
        print(f"{label:>8}  p={probs[label]:.2f}  {text}")
    try:
        client.with_options(soft_prompt=loaded)
    except ConfigError as error:
        print("as a request option:", str(error).split(";")[0])


if __name__ == "__main__":
    main()
