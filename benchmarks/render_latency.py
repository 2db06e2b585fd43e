"""How long `qwenrecipes render` takes, per engine, and how much of that is qwenrecipes's own.

Reports, on the machine it runs on:
  (a) end to end: the `qwenrecipes` console script, process start included (what a user waits for);
  (b) qwenrecipes's share: (a) minus a bare `python -c pass` of the same interpreter, same environment,
      timed the same way in the same rounds (interpreter start + site + .pth files are not qwenrecipes's);
      and, of that share, what is left above `python -c "import click, jinja2, yaml"` (the libraries render
      cannot do without): qwenrecipes's own modules and work;
  (c) in process: importing the library (plan + render modules), then the first
      `render_plan(plan_recipe(...))` call of a fresh process (what the CLI pays after its imports: includes
      loading templates) and a warm repeat call; medians over several fresh processes.
Commands are interleaved round by round so that load changes on a shared VM hit every variant alike, and each
run's CPU time (user + system of the child) is kept next to its wall time: on a busy machine wall times grow
with other people's work, CPU times much less.
Target: <= 0.15 s end to end on the example recipe. Prints a table; writes benchmarks/results/render_latency.json.

    python benchmarks/render_latency.py [--repeat 20] [--recipe recipes/qwen3-4b-qlora.yaml]
    python benchmarks/render_latency.py --source /path/to/other/checkout   # measure another tree's code
    python benchmarks/render_latency.py --pycache-prefix /tmp/pyc          # with a bytecode cache (see README)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.15

# Runs in a fresh interpreter (the library call, no Click): import time, first call, warm calls.
IN_PROCESS = """
import json, statistics, sys, time
start = time.perf_counter()
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.folder import render_plan
imported = time.perf_counter()
recipe, engine, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
render_plan(plan_recipe(recipe, target="cuda"), engine)
first = time.perf_counter()
warm = []
for _ in range(repeat):
    t = time.perf_counter()
    render_plan(plan_recipe(recipe, target="cuda"), engine)
    warm.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported - start, "first_call_s": first - imported,
                  "warm_call_s": statistics.median(warm)}))
"""


def console_script() -> tuple[list[str], str]:
    """The installed `qwenrecipes` entry point (not a pyenv/asdf shim when the real one is findable), and the
    interpreter its shebang names, so the bare-interpreter baseline starts exactly the same Python."""
    candidates = [Path(sysconfig.get_path("scripts")) / "qwenrecipes", shutil.which("qwenrecipes")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            first = Path(candidate).read_bytes().split(b"\n", 1)[0].decode(errors="replace")
            if first.startswith("#!") and "python" in first:
                return [str(candidate)], first[2:].strip().split()[0]
    return [sys.executable, "-m", "qwenrecipes.cli"], sys.executable  # no console script installed


def registry_engines(interpreter: str, env: dict[str, str]) -> list[str]:
    """Every engine the measured tree's registry lists (qwenrecipes.engines.ENGINES: the built-ins, then any
    plug-ins), asked of the same interpreter and environment, so --source measures that tree's engines."""
    listing = subprocess.run([interpreter, "-c", "from qwenrecipes.engines import ENGINES; print(*ENGINES)"],
                             check=True, capture_output=True, text=True, env=env)
    return listing.stdout.split()


def stats(runs: list[tuple[float, float]]) -> dict[str, float]:
    """(wall, cpu) pairs -> wall median/min/max and cpu median."""
    wall = [w for w, _ in runs]
    return {"median_s": statistics.median(wall), "min_s": min(wall), "max_s": max(wall),
            "cpu_median_s": statistics.median(c for _, c in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="Timed runs per command (interleaved).")
    parser.add_argument("--probes", type=int, default=5, help="Fresh processes per engine for the in-process times.")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "qwen3-4b-qlora.yaml"))
    parser.add_argument("--source", default=str(ROOT),
                        help="Checkout whose qwenrecipes is measured (put first on PYTHONPATH, ahead of an editable "
                             "install that may point elsewhere). Default: this one.")
    parser.add_argument("--pycache-prefix", default=None,
                        help="Measure with Python's bytecode cache on, kept under this folder (PYTHONPYCACHEPREFIX; "
                             "PYTHONDONTWRITEBYTECODE unset) instead of the environment as it is.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "render_latency.json"))
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (args.source, env.get("PYTHONPATH")) if p)
    if args.pycache_prefix:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = args.pycache_prefix
    entry, interpreter = console_script()
    engines = registry_engines(interpreter, env)
    commands = {"bare": [interpreter, "-c", "pass"], "deps": [interpreter, "-c", "import click, jinja2, yaml"]}
    for engine in engines:
        commands[engine] = [*entry, "render", args.recipe, "--engine", engine, "--target", "cuda"]

    def run(argv: list[str]) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    for argv in commands.values():  # warm the OS file cache, the bytecode and compiled-template caches
        run(argv)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, argv in commands.items():
            times[name].append(run(argv))

    probes: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
    for _ in range(args.probes):
        for engine in engines:
            probe = subprocess.run([interpreter, "-c", IN_PROCESS, args.recipe, engine, "5"],
                                   check=True, capture_output=True, text=True, env=env)
            probes[engine].append(json.loads(probe.stdout))

    bare, deps = stats(times["bare"]), stats(times["deps"])
    rows: list[dict[str, Any]] = []
    for engine in engines:
        end_to_end = stats(times[engine])
        inner = {f"{key[:-2]}_median_s": statistics.median(p[key] for p in probes[engine])
                 for key in ("import_s", "first_call_s", "warm_call_s")}
        rows.append({"engine": engine, "end_to_end": end_to_end,
                     "qwenrecipes_share_s": end_to_end["median_s"] - bare["median_s"],
                     "qwenrecipes_share_cpu_s": end_to_end["cpu_median_s"] - bare["cpu_median_s"],
                     "above_deps_s": end_to_end["median_s"] - deps["median_s"], "in_process": inner})

    source = Path(args.source)
    result = {
        "recipe": Path(args.recipe).name,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "target_s": TARGET_S,
        "repeat": args.repeat,
        "probes": args.probes,
        "command": f"{'qwenrecipes' if len(entry) == 1 else 'python -m qwenrecipes.cli'} render RECIPE "
                   "--engine ENGINE --target cuda",
        "interpreter": interpreter,
        "bytecode": {
            "PYTHONDONTWRITEBYTECODE": env.get("PYTHONDONTWRITEBYTECODE"),
            "PYTHONPYCACHEPREFIX": env.get("PYTHONPYCACHEPREFIX"),
            "source_has_pycache": (source / "qwenrecipes" / "__pycache__").is_dir(),
        },
        "bare_interpreter": bare,
        "interpreter_plus_deps": deps,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"bare interpreter  ({interpreter} -c pass): median {bare['median_s']:.3f} s "
          f"(cpu {bare['cpu_median_s']:.3f} s)")
    print(f"+ click/jinja2/yaml (-c 'import click, jinja2, yaml'): median {deps['median_s']:.3f} s "
          f"(cpu {deps['cpu_median_s']:.3f} s)")
    print(f"{'engine':13} {'end-to-end':>10} {'min':>6} {'cpu':>6} {'own share':>9} {'own cpu':>7} {'above deps':>10} "
          f"{'imports':>8} {'1st call':>8} {'warm call':>9}")
    for row in rows:
        e, inner = row["end_to_end"], row["in_process"]
        print(f"{row['engine']:13} {e['median_s']:10.3f} {e['min_s']:6.3f} {e['cpu_median_s']:6.3f} "
              f"{row['qwenrecipes_share_s']:9.3f} {row['qwenrecipes_share_cpu_s']:7.3f} {row['above_deps_s']:10.3f} "
              f"{inner['import_median_s']:8.3f} {inner['first_call_median_s']:8.3f} {inner['warm_call_median_s']:9.4f}")
    print("seconds, medians of wall time unless marked cpu. own share = end-to-end - bare interpreter; above deps =\n"
          "end-to-end - the click/jinja2/yaml line; imports / 1st call / warm call: in process (library imports, then\n"
          "the first and a repeated render_plan(plan_recipe(...)) of a fresh process)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
