"""CPU threads on a shared machine: the same short fine-tune at 1 and 2 threads, idle and under load.

Question (issue #32): how much does a busy CPU cost minift at torch's default threads, and does one
thread (what ``minift`` now picks by itself when a 0.2 s sample of /proc/stat says other jobs keep
the cores busy, with a notice) win it back? Each arm runs ``minift finetune`` as a user would, in a
fresh process (``--task sst2 --max-steps 6 --limit-train 200 --limit-dev 200 --max-length 32``, the
installed MiniLM), with ``--threads N`` or, in the "minift's choice" arm, without it (what the
command chooses from /proc/stat, or the load average without it). "Under load" is ``--load`` busy
Python processes (default: one per core) spinning beside it, started before the run and stopped
after. Every arm runs ``--repeats`` times, interleaved; the report gives the median wall time of
the process and of training (``metrics.json``'s ``train.seconds``), the ratios, and whether every
arm wrote the same dev metrics (another thread count can change the order of a sum: on a 2-core
Xeon, 6 steps at 1 and 2 threads gave the same accuracy and F1 and a dev loss differing at the 8th
digit).

    python benchmarks/threads.py            # about 5-15 minutes on 2 cores: run it on a quiet machine
    python benchmarks/threads.py --smoke    # a 1-step check of the wiring (writes to a temp folder)

Writes ``benchmarks/results/threads.{json,md}`` (``--smoke``: a temporary folder, printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minift.fast.cpu_kernels import cpu_model  # the package's one reading of /proc/cpuinfo

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
JOB = ["--task", "sst2", "--max-steps", "6", "--limit-train", "200", "--limit-dev", "200",
       "--max-length", "32", "--batch-size", "16"]
SMOKE_JOB = ["--task", "sst2", "--max-steps", "1", "--limit-train", "16", "--limit-dev", "8",
             "--max-length", "16", "--batch-size", "8"]



def spin(n: int) -> list[subprocess.Popen]:
    """``n`` busy processes: the synthetic load (other jobs holding the cores)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def run_arm(threads: int | None, job: list[str], work: Path) -> dict:
    """One ``minift finetune`` in a fresh process; its wall time, training time and dev scores."""
    out = work / f"run-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MINIFT_THREADS",
                                                            "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "minift", "finetune", *job, "--no-progress", "--out", str(out)]
    argv += [] if threads is None else ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    notice = [line for line in done.stderr.splitlines()
              if line.startswith("minift: ") and " thread" in line]  # the choice's notice
    return {"wall_s": wall, "train_s": metrics["train"]["seconds"],
            "dev": {k: v for k, v in metrics["dev"].items() if isinstance(v, float)},
            "notice": notice[0] if notice else ""}


def measure(arms: list[int | None], load: int, repeats: int, job: list[str], work: Path,
            settle: float) -> dict:
    """Every arm ``repeats`` times, interleaved, under ``load`` busy processes (0: idle)."""
    spinning = spin(load)
    try:
        time.sleep(settle)  # let the busy processes start (the choice arm samples /proc/stat)
        runs: dict[str, list[dict]] = {name(a): [] for a in arms}
        for _ in range(repeats):
            for arm in arms:
                runs[name(arm)].append(run_arm(arm, job, work))
                print(f"  load {load}, {name(arm)}: {runs[name(arm)][-1]['wall_s']:.1f} s",
                      flush=True)
    finally:
        stop(spinning)
    return runs


def name(threads: int | None) -> str:
    return "minift's choice" if threads is None else f"{threads} thread{'s' * (threads > 1)}"


def summary(conditions: dict[str, dict]) -> dict:
    """Median times per condition and arm, and the ratios the question asks for."""
    table = {cond: {arm: {key: statistics.median(r[key] for r in runs)
                          for key in ("wall_s", "train_s")}
                    for arm, runs in arms.items()} for cond, arms in conditions.items()}
    ratios = {}
    for cond, arms in table.items():
        if "1 thread" in arms and "2 threads" in arms:
            ratios[f"{cond}: 2 threads / 1 thread (train)"] = (
                arms["2 threads"]["train_s"] / arms["1 thread"]["train_s"])
    if "idle" in table and "loaded" in table:
        for arm in table["idle"]:
            ratios[f"{arm}: loaded / idle (train)"] = (
                table["loaded"][arm]["train_s"] / table["idle"][arm]["train_s"])
    scores = {json.dumps(r["dev"], sort_keys=True) for arms in conditions.values()
              for runs in arms.values() for r in runs}
    return {"median": table, "ratios": ratios, "same_dev_metrics": len(scores) == 1}


def report(payload: dict) -> str:
    rows = ["| condition | arm | process s | training s |", "|---|---|---:|---:|"]
    for cond, arms in payload["summary"]["median"].items():
        for arm, t in arms.items():
            rows.append(f"| {cond} | {arm} | {t['wall_s']:.1f} | {t['train_s']:.1f} |")
    rows += ["", "| ratio | value |", "|---|---:|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in payload["summary"]["ratios"].items()]
    m = payload["machine"]
    notices = sorted({r["notice"] for arms in payload["runs"].values()
                      for runs in arms.values() for r in runs if r["notice"]})
    return (f"# Threads on a shared CPU\n\n`{payload['command']}` on {m['cpu']} ({m['cpu_count']} "
            f"CPUs; load average at the start: idle {payload['load_average_at_start']['idle']:.1f}, "
            f"loaded {payload['load_average_at_start']['loaded']:.1f}), {payload['repeats']} "
            f"run(s) an arm (medians); under load: {payload['load']} busy processes. Job: `minift "
            f"finetune {' '.join(payload['job'])}`.\n\n" + "\n".join(rows) + "\n\nSame dev "
            f"metrics in every arm: {payload['summary']['same_dev_metrics']}.\n"
            + (f"\nminift's notice under load: `{notices[0]}`\n" if notices else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a 1-step check of the wiring, "
                        "one run an arm, written to a temporary folder")
    parser.add_argument("--load", type=int, default=None, help="busy processes of the loaded "
                        "condition (default: one per core; --smoke: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs an arm (default 3)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds between starting the load and the first run (default 2)")
    parser.add_argument("--results", type=Path, default=None, help="folder of threads.json/.md")
    args = parser.parse_args()
    job = SMOKE_JOB if args.smoke else JOB
    load = args.load if args.load is not None else (1 if args.smoke else os.cpu_count() or 1)
    repeats = args.repeats or (1 if args.smoke else 3)
    settle = args.settle if args.settle is not None else (1.0 if args.smoke else 2.0)
    results = args.results or (Path(tempfile.mkdtemp(prefix="threads-")) if args.smoke
                               else RESULTS)
    arms = [1, 2, None]
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "load_before": os.getloadavg()[0]}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minift-threads-") as work:
        runs, loads = {}, {}
        for cond, busy in (("idle", 0), ("loaded", load)):
            print(f"{cond} ({busy} busy processes)", flush=True)
            loads[cond] = os.getloadavg()[0]  # "idle" is only as idle as the machine is
            runs[cond] = measure(arms, busy, repeats, job, Path(work), settle if busy else 0)
    payload = {"machine": machine, "command": "python benchmarks/threads.py"
               + (" --smoke" if args.smoke else ""), "job": job, "load": load,
               "repeats": repeats, "load_average_at_start": loads, "runs": runs, "summary": summary(runs),
               "total_seconds": time.perf_counter() - start}
    results.mkdir(parents=True, exist_ok=True)
    (results / "threads.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = report(payload)
    (results / "threads.md").write_text(text)
    print(text)
    print(f"wrote {results / 'threads.json'} and {results / 'threads.md'}")


if __name__ == "__main__":
    main()
