"""The adapter benchmark's task suite: checkable questions, seeded train and held-out splits.

Three tasks, each with two few-shot turns that fix the answer's form (one short line):
- arithmetic: "What is 7 plus 12?" with both numbers in 1..15 (SmolLM2-135M at T=0.9: about one
  sample in four right, a right answer among 8 samples for about half the questions);
- capitals: "What is the capital of Kenya?" for capitals.json's 193 UN members and
  the Vatican, less the shots' France and Japan (193 questions);
- comparison: "Which number is larger, 24 or 57?" with two numbers in 10..99 (the model leans
  towards the first number it read, so majority vote inherits its bias).
Splits never share a question (arithmetic's 3 plus 5 and 5 plus 3 are different questions).
Run `python benchmarks/tasks/suite.py OUT_DIR` to write every split as JSON lines.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 2024

__all__ = ["TASKS", "Item", "Task", "folds", "split"]


@dataclass(frozen=True)
class Item:
    """One question with its gold answer(s) and a reference answer in the shots' form."""

    question: str
    gold: tuple[str, ...]  # accepted answers (a number as text, a city's names)
    reference: str


@dataclass(frozen=True)
class Task:
    """A task: its questions (in a seeded order), few-shot turns, checker and answer extractor."""

    name: str
    items: tuple[Item, ...]
    shots: tuple[tuple[str, str], ...]
    extract: Callable[[str], str | None]  # the answer a response gives (for majority vote)

    def check(self, item: Item, response: str) -> bool:
        """Whether a response gives a gold answer."""
        answer = self.extract(response)
        return answer is not None and answer.casefold() in {g.casefold() for g in item.gold}

    def messages(self) -> list[dict[str, str]]:
        """The few-shot turns as chat messages, to put before each question."""
        out: list[dict[str, str]] = []
        for question, answer in self.shots:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return out


def _last_number(response: str) -> str | None:
    """The last integer in a response ("7 plus 12 is 19." -> "19")."""
    found = re.findall(r"-?\d+", response.replace(",", ""))
    return found[-1] if found else None


def _larger_number(response: str) -> str | None:
    """The number a response calls larger ("57 is larger." or "The larger number is 57.")."""
    before = re.search(r"(\d+)\s+is\s+(?:the\s+)?(?:larger|greater|bigger)", response)
    after = re.search(r"(?:larger|greater|bigger)(?:\s+number)?\s+is\s+(\d+)", response)
    match = before or after
    return match.group(1) if match else None


def _arithmetic() -> Task:
    """Sums of two numbers in 1..15, the shots' pairs left out."""
    shots = (("What is 12 plus 15?", "12 plus 15 is 27."), ("What is 3 plus 8?", "3 plus 8 is 11."))
    pairs = [(a, b) for a in range(1, 16) for b in range(1, 16) if (a, b) not in {(12, 15), (3, 8)}]
    random.Random(SEED).shuffle(pairs)
    items = tuple(Item(f"What is {a} plus {b}?", (str(a + b),), f"{a} plus {b} is {a + b}.") for a, b in pairs)
    return Task("arithmetic", items, shots, _last_number)


def _capitals() -> Task:
    """Capitals of the 195 countries in capitals.json (several accepted names where usage differs).

    The file's first table is shuffled, then its `added` countries, shuffled, come after it: the
    held-out questions (the first 40) stay those of the first table whatever is added.
    """
    data = json.loads((HERE / "capitals.json").read_text())
    table: dict[str, list[str]] = {**data["capitals"], **data["added"]}
    shots = (("What is the capital of France?", "The capital of France is Paris."), ("What is the capital of Japan?", "The capital of Japan is Tokyo."))
    countries = [c for c in sorted(data["capitals"]) if c not in ("France", "Japan")]
    random.Random(SEED).shuffle(countries)
    added = sorted(data["added"])
    random.Random(SEED).shuffle(added)
    countries += added
    items = tuple(Item(f"What is the capital of {c}?", tuple(table[c]), f"The capital of {c} is {table[c][0]}.") for c in countries)
    cities = sorted({name for names in table.values() for name in names}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(c) for c in cities) + r")\b", re.IGNORECASE)

    def named_city(response: str) -> str | None:
        """The first known capital named after ' is ', else the words after ' is '."""
        tail = response.split(" is ", 1)[-1]
        match = pattern.search(tail)
        if match:
            return match.group(1)
        words = re.findall(r"[\w'-]+", tail)
        return " ".join(words[:2]) or None

    return Task("capitals", items, shots, named_city)


def _comparison() -> Task:
    """Which of two numbers in 10..99 is larger, in a seeded order."""
    shots = (("Which number is larger, 12 or 45?", "45 is larger."), ("Which number is larger, 83 or 27?", "83 is larger."))
    rng = random.Random(SEED)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b and {a, b} not in ({12, 45}, {83, 27})]
    rng.shuffle(pairs)
    items = tuple(Item(f"Which number is larger, {a} or {b}?", (str(max(a, b)),), f"{max(a, b)} is larger.") for a, b in pairs[:400])
    return Task("comparison", items, shots, _larger_number)


TASKS: tuple[Task, ...] = (_arithmetic(), _capitals(), _comparison())


def split(task: Task, train: int, held_out: int) -> tuple[list[Item], list[Item]]:
    """(train, held-out): the first `held_out` questions are held out, the next `train` train.

    The held-out questions so stay the same whatever the training size.
    """
    if train + held_out > len(task.items):
        raise ValueError(f"{task.name} has {len(task.items)} questions, not {train + held_out}")
    return list(task.items[held_out : held_out + train]), list(task.items[:held_out])


def folds(task: Task, train: int, held_out: int) -> list[tuple[list[Item], list[Item]]]:
    """Every question held out once: blocks of `held_out` in the seeded order, each with up to `train` of the others.

    The first block is `split`'s held-out set, with the same training questions.
    """
    out = []
    for start in range(0, len(task.items), held_out):
        rest = [*task.items[start + held_out :], *task.items[:start]]
        out.append((rest[:train], list(task.items[start : start + held_out])))
    return out


def main(argv: list[str]) -> int:
    """Write each task's default splits (60 train, 40 held-out) as JSON lines into a folder."""
    out = Path(argv[0]) if argv else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        for name, items in zip(("train", "held_out"), split(task, 60, 40)):
            lines = [json.dumps({"question": i.question, "gold": list(i.gold), "reference": i.reference}) for i in items]
            (out / f"{task.name}.{name}.jsonl").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
