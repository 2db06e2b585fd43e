"""Packed vs unpacked supervised tokens/s on the CPU engines, tiny model, realistic chat lengths, one run.

    .venv/bin/python benchmarks/packing_cpu.py [--engines trl,axolotl,llamafactory,swift,unsloth]
        [--unpacked trl,axolotl,llamafactory,swift,unsloth]

Each engine trains recipes/tiny-cpu.yaml (builtin:tiny-qwen3, LoRA r=8, fp32, micro-batch 4) on the same
synthetic rows whose lengths follow the LMSYS-Chat-1M lognormal (qwenrecipes/data/lengths.py), capped at
max_seq_length 512, through `qwenrecipes bench` twice: unpacked (data.packing false: every micro-batch padded to
its longest row) and packed (qwenrecipes' bins, data/packing.py). An engine that refuses the bins gets a row
saying why. Prints a table and writes benchmarks/results/packing_cpu.json (+ the bench's report.md beside it).
A benchmark, not a test: numbers depend on the machine's load, recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"
OUT = ROOT / "benchmarks" / "results" / "packing_cpu.json"
SEQ = 512
DATA = f"400xlmsys:{SEQ}"
MODES = {"unpacked": ["data.packing=false"], "packed": ["data.packing=true"]}


def bench(engines: str, mode: str, out_dir: Path, steps: int, warmup: int) -> None:
    argv = [str(Path(sys.executable).parent / "qwenrecipes"), "bench", str(RECIPE), "-e", engines, "--label", mode,
            "--steps", str(steps), "--warmup", str(warmup), "--target", "cpu", "--synthetic-data", DATA,
            "-o", str(out_dir), "--set", f"data.max_seq_length={SEQ}", "--set", "training.micro_batch_size=4",
            "--set", "training.gradient_accumulation_steps=1", "--set", "training.warmup_steps=1"]
    for item in MODES[mode]:
        argv += ["--set", item]
    print("$ qwenrecipes", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=False)


def table(rows: list[dict]) -> str:
    lines = [f"{'engine':<13} {'mode':<9} {'tok/s':>8} {'supervised tok/s':>17} {'padding':>8} "
             f"{'bin fill':>8} {'vs unpacked':>11}  status"]
    unpacked = {r["engine"]: r for r in rows if r.get("label") == "unpacked"}
    for r in sorted(rows, key=lambda r: (r["engine"], r.get("label") != "unpacked")):
        base = unpacked.get(r["engine"], {})
        ratio = (f"{r['supervised_tokens_per_s'] / base['supervised_tokens_per_s']:.2f}x"
                 if r.get("label") == "packed" and r.get("status") == "ok" and base.get("status") == "ok" else "")
        status = r.get("status", "?")
        if status != "ok":
            status += ": " + str(r.get("error") or "; ".join(r.get("status_reasons") or []))[:160]
        pad = r.get("padding_fraction")
        fill = r.get("bin_fill_pct")
        lines.append(f"{r['engine']:<13} {r.get('label', ''):<9} {r.get('tokens_per_s') or 0:>8.0f} "
                     f"{r.get('supervised_tokens_per_s') or 0:>17.0f} "
                     f"{'' if pad is None else f'{100 * pad:.1f}%':>8} {'' if fill is None else f'{fill:.1f}%':>8} "
                     f"{ratio:>11}  {status}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="trl,axolotl,llamafactory,swift,unsloth",
                        help="engines run packed (one that refuses the bins gets a row saying why)")
    parser.add_argument("--unpacked", default="trl,axolotl,llamafactory,swift,unsloth",
                        help="engines run unpacked too (default: all five, as all take the bins; each costs a full "
                             "run on a 2-core VM)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    options = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qr-packing-") as tmp:
        out_dir = Path(tmp)
        bench(options.unpacked, "unpacked", out_dir, options.steps, options.warmup)
        bench(options.engines, "packed", out_dir, options.steps, options.warmup)
        results = out_dir / "results.json"
        rows = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else []
        report = (out_dir / "report.md").read_text(encoding="utf-8") if (out_dir / "report.md").is_file() else ""
    rows = rows["rows"] if isinstance(rows, dict) else rows
    keep = ("engine", "engine_version", "label", "status", "status_reasons", "error", "tokens_per_s",
            "supervised_tokens_per_s", "padding_fraction", "bin_fill_pct", "tokens_per_step", "step_time_p50",
            "loss_first", "loss_last", "seq_len", "micro_batch", "packing")
    record = {
        "what": "packed vs unpacked supervised tokens/s, tiny Qwen3 (LoRA r=8, fp32), CPU engines, one run",
        "data": f"--synthetic-data {DATA} (lognormal fitted to LMSYS-Chat-1M, qwenrecipes/data/lengths.py)",
        "recipe": str(RECIPE.relative_to(ROOT)), "seq_len": SEQ, "steps": options.steps, "warmup": options.warmup,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared VM: other sessions' work runs alongside; compare rows of this run only"},
        "wall_s": round(time.time() - started, 1),
        "rows": [{k: r.get(k) for k in keep if k in r} for r in rows],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    OUT.with_suffix(".report.md").write_text(report, encoding="utf-8")
    print(table(rows))
    print(f"\nload average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
