"""Run benchmarks: ``python -m benchmarks [name ...]`` (all when no name is given).

Each benchmark is a module with a ``main(argv)`` function; add yours to :data:`BENCHMARKS`. Arguments after
``--`` are passed to every selected benchmark (e.g. ``python -m benchmarks search -- --quick``).
"""

from __future__ import annotations

import importlib
import sys

#: name -> module (imported only when selected, so one benchmark's dependencies never slow another).
BENCHMARKS: dict[str, str] = {
    "search": "benchmarks.bench_search",
    "pull": "benchmarks.bench_pull",
    "bulk": "benchmarks.bench_bulk",
    "sandbox": "benchmarks.bench_sandbox",
    "whole": "benchmarks.whole_process",
    "directory": "benchmarks.bench_directory",
    "models": "benchmarks.bench_models",
    "fleet": "benchmarks.bench_fleet",
    "web": "benchmarks.bench_web",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    names = args or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"\n=== benchmark: {name} ===", flush=True)
        importlib.import_module(BENCHMARKS[name]).main(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
