"""One entry point for every benchmark: `python benchmarks/run.py KIND [--json FILE] [--quick] [--task NAME ...]`.

Each KIND lives in `benchmarks/bench_KIND.py` and exposes `rows(quick: bool) -> list[dict]`; a kind
made of tasks also names them in `TASK_NAMES` and takes `rows(quick, tasks=...)`, so `--task` runs
some of them. A kind made of task families and training sizes (adapter_lofo) names them in
`FAMILY_NAMES` and `TRAIN_SIZES` and takes `rows(quick, families=..., train_sizes=...)`, for
`--family` and `--train`. The rows print as a markdown table, and as JSON (one object per row) with --json.
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


def _families_and_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace, module: object) -> dict[str, tuple]:
    """`--family` and `--train` as rows()'s keywords, the families checked against the kind's FAMILY_NAMES."""
    families = getattr(module, "FAMILY_NAMES", ())
    if not families:
        parser.error(f"{args.kind} takes no --family or --train (adapter_lofo does)")
    unknown = [f for f in args.family or () if f not in families]
    if unknown:
        parser.error(f"{args.kind} has no family {', '.join(unknown)} (its families: {', '.join(families)})")
    if any(n < 1 for n in args.train or ()):
        parser.error("--train takes a number of training questions, at least 1")
    return {k: tuple(v) for k, v in (("families", args.family), ("train_sizes", args.train)) if v}


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark kind and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=kinds())
    parser.add_argument("--json", type=Path, help="also write the rows as a JSON list to this file")
    parser.add_argument("--quick", action="store_true", help="a small configuration, for smoke runs")
    parser.add_argument("--task", action="append", help="only this task of the kind (repeatable; default: all)")
    parser.add_argument("--family", action="append", help="only this task family (adapter_lofo; repeatable; default: all)")
    parser.add_argument("--train", action="append", type=int, help="only this training size (adapter_lofo; repeatable; default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"bench_{args.kind}")
    if args.family or args.train:
        rows = module.rows(quick=args.quick, **_families_and_sizes(parser, args, module))
    elif not args.task:
        rows = module.rows(quick=args.quick)
    else:
        names = getattr(module, "TASK_NAMES", ())
        unknown = [t for t in args.task if t not in names]
        if unknown:
            parser.error(f"{args.kind} has no task {', '.join(unknown)} (its tasks: {', '.join(names) or 'none'})")
        rows = module.rows(quick=args.quick, tasks=tuple(args.task))
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
