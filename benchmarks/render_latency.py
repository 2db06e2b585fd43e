"""How long `qwenrecipes render` takes, end to end (process start included), per engine.

Target: <= 0.15 s on the example recipe. Prints a table and writes benchmarks/results/render_latency.json.
    python benchmarks/render_latency.py [--repeat 10] [--recipe recipes/qwen3-4b-qlora.yaml]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["axolotl", "llamafactory", "unsloth", "trl"]


def time_command(argv: list[str], repeat: int) -> list[float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm the OS file cache once
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "qwen3-4b-qlora.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "render_latency.json"))
    args = parser.parse_args()
    executable = shutil.which("qwenrecipes")
    base = [executable] if executable else [sys.executable, "-m", "qwenrecipes.cli"]
    rows = []
    for engine in ENGINES:
        times = time_command([*base, "render", args.recipe, "--engine", engine, "--target", "cuda"], args.repeat)
        rows.append({"engine": engine, "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "repeat": args.repeat})
    print(f"{'engine':14} {'median s':>9} {'min s':>7} {'max s':>7}")
    for row in rows:
        print(f"{row['engine']:14} {row['median_s']:9.3f} {row['min_s']:7.3f} {row['max_s']:7.3f}")
    result = {"recipe": Path(args.recipe).name, "python": platform.python_version(), "machine": platform.machine(),
              "target_s": 0.15, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
