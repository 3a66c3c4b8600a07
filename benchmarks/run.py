"""One entry point for every benchmark: `python benchmarks/run.py KIND [--json FILE] [--quick]`.

Each KIND lives in `benchmarks/bench_KIND.py` and exposes `rows(quick: bool) -> list[dict]`.
The rows print as a markdown table, and as JSON (one object per row) with --json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def kinds() -> list[str]:
    """The benchmark kinds that exist, from the bench_*.py files beside this one."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table; columns in first-seen order, floats to 4 significant digits."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark kind and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=kinds())
    parser.add_argument("--json", type=Path, help="also write the rows as a JSON list to this file")
    parser.add_argument("--quick", action="store_true", help="a small configuration, for smoke runs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"bench_{args.kind}")
    rows = module.rows(quick=args.quick)
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
