"""The adapter benchmark's task suite: checkable questions, seeded train and held-out splits.

Three tasks, each with two few-shot turns that fix the answer's form (one short line):
- arithmetic: "What is 7 plus 12?" with both numbers in 1..15 (SmolLM2-135M at T=0.9: about one
  sample in four right, a right answer among 8 samples for about half the questions);
- capitals: "What is the capital of Kenya?" for capitals.json's 193 UN members and
  the Vatican, less the shots' France and Japan (193 questions);
- comparison: "Which number is larger, 24 or 57?" with two numbers in 10..99 (the model leans
  towards the first number it read, so majority vote inherits its bias).
Splits never share a question (arithmetic's 3 plus 5 and 5 plus 3 are different questions).

`TASKS` stays those three (the shipped adapters and their tables were made on them). `FAMILIES`
adds five families of other kinds (`KIND` names each family's kind), for leave-one-family-out:
- opposites (word relations): "What is the opposite of hot?", both directions of 122 word pairs
  (words.json; a few fair synonyms accepted), a pair's two questions side by side (244 questions);
- units (unit conversion): "How many centimeters are in 7 meters?", 14 unit pairs, 2..20 (264);
- word_problems (reasoning): one- and two-step problems with a final number from five templates
  ("Tom has 4 apples and buys 7 more. How many apples does he have now?"; 250);
- letters (format following): "What is the first letter of the word 'garden'?" and its last
  letter, for 136 words (words.json), a word's two questions side by side (272);
- capital_facts (yes/no facts): "Is Nairobi the capital of Kenya?" for every country in
  capitals.json but the shots' two, once true and once with another country's capital (386).
Side by side: with an even held-out size (40) a twin never trains while the other is held out.
Run `python benchmarks/tasks/suite.py OUT_DIR` to write every family's split as JSON lines.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 2024

__all__ = ["FAMILIES", "KIND", "TASKS", "Item", "Task", "folds", "split"]


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


def _words() -> dict[str, Any]:
    """The hand-written word lists (words.json) for the opposites and letters families."""
    return json.loads((HERE / "words.json").read_text())


def _in_pairs(groups: list[tuple[Item, Item]]) -> tuple[Item, ...]:
    """Groups of two questions on one subject, shuffled with `SEED` and kept side by side.

    With an even held-out size (40) every split and fold boundary is even, so a subject's two
    questions never straddle train and held-out: no held-out answer can be learnt from its twin.
    """
    rng = random.Random(SEED)
    groups = [tuple(rng.sample(group, 2)) for group in groups]
    rng.shuffle(groups)
    return tuple(item for group in groups for item in group)


def _word_after_is(response: str) -> str | None:
    """The first word after ' is ' ("The opposite of hot is cold." -> "cold"), else the first word."""
    match = re.search(r"\bis\s+(?:the\s+(?:word\s+)?)?['\"]?([A-Za-z-]+)", response)
    words = re.findall(r"[A-Za-z-]+", response)
    return match.group(1) if match else (words[0] if words else None)


def _opposites() -> Task:
    """Opposites of common words ("What is the opposite of hot?"), both directions of 122 pairs."""
    data = _words()
    shots = (("What is the opposite of big?", "The opposite of big is small."), ("What is the opposite of early?", "The opposite of early is late."))

    def item(word: str, opposite: str) -> Item:
        gold = (opposite, *data["also_accepted"].get(word, []))
        return Item(f"What is the opposite of {word}?", gold, f"The opposite of {word} is {opposite}.")

    return Task("opposites", _in_pairs([(item(a, b), item(b, a)) for a, b in data["opposites"]]), shots, _word_after_is)


_UNITS = (("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("centimeters", "millimeters", 10), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("years", "months", 12), ("feet", "inches", 12), ("yards", "feet", 3), ("decades", "years", 10), ("centuries", "years", 100))


def _stated_number(response: str) -> str | None:
    """The number a response states: the last after 'is'/'are'/'equals' ("There are 700 ..."), else the last one."""
    text = response.replace(",", "")
    stated = re.findall(r"\b(?:is|are|equals?|makes?)\s+(-?\d+)", text)
    return stated[-1] if stated else _last_number(text)


def _units() -> Task:
    """Unit conversions ("How many centimeters are in 7 meters?"): 14 unit pairs, 2..20 of the larger unit."""
    shots = (("How many minutes are in 2 hours?", "2 hours is 120 minutes."), ("How many grams are in 3 kilograms?", "3 kilograms is 3000 grams."))
    cases = [(n, big, small, factor) for big, small, factor in _UNITS for n in range(2, 21) if (n, big) not in {(2, "hours"), (3, "kilograms")}]
    random.Random(SEED).shuffle(cases)
    items = tuple(Item(f"How many {small} are in {n} {big}?", (str(n * factor),), f"{n} {big} is {n * factor} {small}.") for n, big, small, factor in cases)
    return Task("units", items, shots, _stated_number)


_NAMES = (("Tom", "he"), ("Lily", "she"), ("Sam", "he"), ("Emma", "she"), ("Jack", "he"), ("Mia", "she"), ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Ava", "she"), ("Noah", "he"), ("Ella", "she"))
_OBJECTS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "cards", "stamps", "shells", "balloons")
_PROBLEMS: tuple[tuple[str, str, Callable[[int, int, int], int]], ...] = (
    ("{n} has {a} {o} and buys {b} more. How many {o} does {p} have now?", "{a} + {b} = {x}", lambda a, b, c: a + b),
    ("{n} has {a} {o} and gives {c} to {m}. How many {o} does {p} have left?", "{a} - {c} = {x}", lambda a, b, c: a - c),
    ("{n} buys {b} boxes with {c} {o} in each box. How many {o} does {p} buy?", "{b} x {c} = {x}", lambda a, b, c: b * c),
    ("{n} has {a} {o}, buys {b} more, then gives {c} to {m}. How many {o} does {p} have now?", "{a} + {b} - {c} = {x}", lambda a, b, c: a + b - c),
    ("{n} has {a} {o}. {m} has {b} more {o} than {n}. How many {o} do they have together?", "{a} + {a} + {b} = {x}", lambda a, b, c: 2 * a + b),
)


def _answer_number(response: str) -> str | None:
    """The number after 'answer is' ("3 + 5 = 8. The answer is 8." -> "8"), else the last number."""
    text = response.replace(",", "")
    match = re.search(r"answer\s+is\s*:?\s*(-?\d+)", text, re.IGNORECASE)
    return match.group(1) if match else _last_number(text)


def _word_problems() -> Task:
    """One- and two-step word problems with a final number (names, objects, numbers 2..12).

    The five templates take turns, so every block of 40 questions holds 8 of each.
    """
    shots = (
        ("Anna has 3 pears and buys 5 more. How many pears does she have now?", "3 + 5 = 8. The answer is 8."),
        ("Ben has 10 coins, buys 2 more, then gives 4 to Kim. How many coins does he have now?", "10 + 2 - 4 = 8. The answer is 8."),
    )
    rng, seen, items = random.Random(SEED), set(), []
    while len(items) < 250:
        question, working, solve = _PROBLEMS[len(items) % len(_PROBLEMS)]
        (n, p), (m, _) = rng.sample(_NAMES, 2)
        a, b, c = rng.randint(6, 12), rng.randint(2, 6), rng.randint(2, 5)
        text, x = question.format(n=n, p=p, m=m, a=a, b=b, c=c, o=rng.choice(_OBJECTS)), solve(a, b, c)
        if text not in seen:
            seen.add(text)
            items.append(Item(text, (str(x),), working.format(a=a, b=b, c=c, x=x) + f". The answer is {x}."))
    return Task("word_problems", tuple(items), shots, _answer_number)


def _named_letter(response: str) -> str | None:
    """The letter a response names ("The first letter of 'garden' is g." -> "g"), or a lone letter."""
    match = re.search(r"\bis\s+(?:the\s+letter\s+)?['\"]?([A-Za-z])['\"]?(?![\w'])", response)
    lone = re.fullmatch(r"\W*([A-Za-z])\W*", response)
    return (match or lone).group(1) if match or lone else None


def _letters() -> Task:
    """The first and the last letter of 136 common words ("What is the first letter of the word 'garden'?")."""
    shots = (("What is the first letter of the word 'table'?", "The first letter of 'table' is t."), ("What is the last letter of the word 'house'?", "The last letter of 'house' is e."))

    def item(word: str, which: str) -> Item:
        letter = word[0] if which == "first" else word[-1]
        return Item(f"What is the {which} letter of the word '{word}'?", (letter,), f"The {which} letter of '{word}' is {letter}.")

    return Task("letters", _in_pairs([(item(w, "first"), item(w, "last")) for w in _words()["letters"]]), shots, _named_letter)


def _yes_no(response: str) -> str | None:
    """The first 'yes' or 'no' in a response ("No, it is not." -> "No")."""
    match = re.search(r"\b(yes|no)\b", response, re.IGNORECASE)
    return match.group(1) if match else None


def _capital_facts() -> Task:
    """Yes/no capital facts from capitals.json: per country one true question and one false one (another country's capital)."""
    data = json.loads((HERE / "capitals.json").read_text())
    table: dict[str, list[str]] = {**data["capitals"], **data["added"]}
    shots = (("Is Paris the capital of France?", "Yes, Paris is the capital of France."), ("Is Madrid the capital of Japan?", "No, the capital of Japan is Tokyo."))
    countries = [c for c in table if c not in ("France", "Japan")]
    rng, groups = random.Random(SEED), []
    for country in countries:
        city = table[country][0]
        other = rng.choice([table[c][0] for c in countries if c != country and table[c][0] not in table[country]])
        true = Item(f"Is {city} the capital of {country}?", ("yes",), f"Yes, {city} is the capital of {country}.")
        false = Item(f"Is {other} the capital of {country}?", ("no",), f"No, the capital of {country} is {city}.")
        groups.append((true, false))
    return Task("capital_facts", _in_pairs(groups), shots, _yes_no)


FAMILIES: tuple[Task, ...] = (*TASKS, _opposites(), _units(), _word_problems(), _letters(), _capital_facts())
KIND: dict[str, str] = {
    "arithmetic": "arithmetic",
    "capitals": "knowledge",
    "comparison": "comparison",
    "opposites": "word relations",
    "units": "unit conversion",
    "word_problems": "reasoning",
    "letters": "format following",
    "capital_facts": "yes/no facts",
}


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
    """Write each family's default splits (60 train, 40 held-out) as JSON lines into a folder."""
    out = Path(argv[0]) if argv else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    for task in FAMILIES:
        for name, items in zip(("train", "held_out"), split(task, 60, 40)):
            lines = [json.dumps({"question": i.question, "gold": list(i.gold), "reference": i.reference}) for i in items]
            (out / f"{task.name}.{name}.jsonl").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
