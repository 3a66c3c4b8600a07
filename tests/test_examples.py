"""Every numbered example runs to the end, as a user would run it (the README's demo among them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("[0-9][0-9]_*.py"))


def test_the_examples_are_numbered_uniquely_from_one() -> None:
    numbers = [int(p.name[:2]) for p in EXAMPLES]
    assert numbers[0] == 1 and len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    result = subprocess.run(  # the environment is the test's (clean_env has removed OPENAI_* and BLACKBOX_*), its temp folders in tmp_path
        [sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip(), "an example should show what it did"
    if example.stem == "01_quickstart":  # the README's demo shows what sets the SDK apart
        for shown in ("cache_hit=True", "budget refusal: per-call budget", "reranked answer:"):
            assert shown in result.stdout, result.stdout
