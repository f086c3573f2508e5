"""The agentkit-tiny held-out evaluation through one shared engine versus a process per job.

    python bench/eval_engine.py --episodes 160 --jobs 16 --out bench/results/eval_engine_cpu.json

Runs `examples/eval_tiny.py --generate N` (held-out episodes made on the fly, seed 0: the same episodes
every time) once per mode, each as its own subprocess, and times the whole command (interpreter start,
model loads, a fresh bubblewrap sandbox per episode, everything a user waits for):

  processes J   `--jobs J`: J processes, each loading its own model and running every J-th episode in turn
  engine J      `--jobs J --engine`: one process, J episodes at once as tasks of one event loop, every
                agent on the process's one engine (its decode steps batched across the J runs)

Why whole commands rather than an in-process timer: the per-process mode's cost is largely its processes
(J interpreters importing torch and loading the model on the same cores), which an in-process timer would
not see. Rows: wall seconds, episodes/s, success rate, and which episodes failed (the modes should fail
the same ones: greedy decoding, and the engine's batched steps give the outputs of runs one by one).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_mode(episodes: int, jobs: int, engine: bool, sandbox: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, str(ROOT / "examples" / "eval_tiny.py"), "--generate", str(episodes)]
        cmd += ["--limit", str(episodes), "--jobs", str(jobs), "--sandbox", sandbox, "--out", str(out)]
        if engine:
            cmd.append("--engine")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        report = json.loads(out.read_text(encoding="utf-8"))
    return {
        "row": f"{'engine' if engine else 'processes'} {jobs}",
        "mode": "engine" if engine else "processes",
        "jobs": jobs,
        "episodes": report["episodes"],
        "seconds": seconds,
        "episodes_per_s": report["episodes"] / seconds,
        "success_rate": report["success_rate"],
        "strict_parse_rate": report["strict_parse_rate"],
        "failed": sorted(f["id"] for f in report["failures"]),
        "command": " ".join(["python", *cmd[1:]]).replace(str(ROOT) + "/", "").replace(f" --out {out}", ""),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=160)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--baseline-jobs", type=int, default=0, help="also per-process with this many jobs")
    ap.add_argument("--sandbox", default="bwrap")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    modes = [(args.jobs, False), (args.jobs, True)]
    if args.baseline_jobs:
        modes.insert(0, (args.baseline_jobs, False))
    rows = []
    for jobs, engine in modes:
        row = run_mode(args.episodes, jobs, engine, args.sandbox)
        rows.append(row)
        print(
            f"{row['row']:>14}: {row['seconds']:7.1f} s  {row['episodes_per_s']:5.2f} episodes/s  "
            f"success {row['success_rate']:.1%}  failed {row['failed']}",
            flush=True,
        )
    result = {
        "bench": "eval_engine",
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "episodes": args.episodes,
        "rows": rows,
        "same_failures": len({tuple(r["failed"]) for r in rows}) == 1,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
