"""Command-line start-up: ``orchestrator --help`` and ``orchestrator config check FILE`` as a user
runs them (a fresh interpreter each time), against a bare ``python -c pass`` timed in the same
run, in turn with them. Prints one JSON line: the median of each, the targets and whether they
are met, and which heavy packages ``--help`` imported (none, once the CLI is thin all the way).

    .venv/bin/python bench/cli_speed.py            # 9 runs of each, ~30 s
    .venv/bin/python bench/cli_speed.py --quick    # 3 runs of each, ~10 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import emit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "orchestrator.yaml"
#: Seconds each command should take at most (a fresh interpreter, start to exit).
TARGETS = {"help_s": 0.3, "config_check_s": 0.3}
#: Packages a thin ``--help`` has no use for.
HEAVY = ("pydantic", "httpx", "aiohttp", "structlog", "rich", "yaml", "jinja2", "phonenumbers")
COMMANDS = {
    "baseline_python_s": [sys.executable, "-c", "pass"],
    "help_s": [sys.executable, "-m", "orchestrator", "--help"],
    "config_check_s": [sys.executable, "-m", "orchestrator", "config", "check", str(CONFIG)],
}
IMPORTED_BY_HELP = f"""
import json, runpy, sys
sys.argv = ["orchestrator", "--help"]
try:
    runpy.run_module("orchestrator", run_name="__main__")
except SystemExit:
    pass
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps(heavy), file=sys.stderr)
"""


def timed(argv: list[str]) -> float:
    """Seconds from start to exit of one run of ``argv`` (output discarded)."""
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def heavy_imports_of_help() -> list[str]:
    """The heavy packages ``orchestrator --help`` imports."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY_HELP], cwd=ROOT, capture_output=True, check=True
    )
    found: list[str] = json.loads(done.stderr.decode().strip().splitlines()[-1])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs of each command (default 9)")
    parser.add_argument("--quick", action="store_true", help="3 runs of each")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    for argv in COMMANDS.values():  # warm the page cache and the bytecode
        timed(argv)
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):  # in turn, so that the machine's noise falls on all three alike
        for name, argv in COMMANDS.items():
            samples[name].append(timed(argv))
    result: dict[str, object] = {"bench": "cli_speed", "runs": runs}
    medians = {name: round(statistics.median(values), 3) for name, values in samples.items()}
    result.update(medians)
    result["min"] = {name: round(min(values), 3) for name, values in samples.items()}
    result["over_baseline"] = {
        name: round(medians[name] - medians["baseline_python_s"], 3) for name in TARGETS
    }
    result["targets"] = TARGETS
    result["met"] = {name: medians[name] < target for name, target in TARGETS.items()}
    result["help_imports"] = heavy_imports_of_help()
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
