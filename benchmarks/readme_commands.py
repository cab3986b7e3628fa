"""The README's two commands on this machine: how long each takes, and what the main one prints.

Question: what may README.md say about its two commands (the main ``minift finetune --task
sst2 ...`` job and ``python -m pytest``): their times, the table the job prints, the tests the
suite runs? The script runs them as a user does once installed, each in a fresh process, with
no ``MINIFT_THREADS`` or ``OMP_NUM_THREADS`` (minift chooses its threads):

1. the README's main command, read from README.md (its ``--out`` moved to a temporary folder):
   its wall seconds, its CPU seconds (the process and its children) and the table it prints;
2. ``python -m pytest`` (the slow tests left out, as the README's second command): its wall
   seconds and pytest's closing line (passed, deselected, xfailed).

Before each, minift's own reading of the machine (``minift.run.cli.busy_cores`` over 1 s)
records the cores other jobs kept busy: a time the README calls "idle" must have had under half
a core busy, which minift itself reads as idle (it then uses every core). Run it on a quiet
machine; the times of a busy one are recorded as such.

``benchmarks/results/readme_commands.json`` keeps one entry per machine (CPU model, torch
threads, GPU), as lesson_times.json does: a run replaces its own machine's entry and keeps the
others'. tests/test_readme_numbers.py holds the README's times, table and test count to it.

    python benchmarks/readme_commands.py              # the job, then the suite
    python benchmarks/readme_commands.py --no-suite   # the job only
    python benchmarks/readme_commands.py --smoke      # the job on 64 sentences, to a temp folder
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from lesson_times import commit, machine, machine_key  # the same machine record

from minift.run.cli import busy_cores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NAME = "readme_commands"
MAIN = re.compile(r"^minift finetune --task sst2 .*$", re.M)  # the README's main command
IDLE_CORES = 0.5  # busier than this, a time is not "idle"


def main_command(readme: Path = REPO / "README.md") -> list[str]:
    """The README's main command, from its first line that starts ``minift finetune --task sst2``."""
    found = MAIN.search(readme.read_text(encoding="utf-8"))
    if not found:
        raise SystemExit(f"{readme}: no line starts with `minift finetune --task sst2`")
    return shlex.split(found.group(0))


def user_env() -> dict[str, str]:
    """A user's shell once installed: MINIFT_DATA set, no thread settings, this checkout first."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIFT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("MINIFT_DATA", str(REPO.parent / "shared" / "data"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def timed(argv: list[str], env: dict[str, str]) -> dict:
    """Run ``argv`` in REPO: wall and CPU seconds, the busy cores before, stdout and stderr."""
    busy = busy_cores(interval=1.0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"command": shlex.join(argv), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "busy_cores_before": None if busy is None else round(busy[0], 2),
            "stdout": done.stdout, "stderr": done.stderr}


def run_job(command: list[str], out: Path, env: dict[str, str], smoke: bool) -> dict:
    argv = list(command[1:])
    argv[argv.index("--out") + 1] = str(out)
    if smoke:
        argv[argv.index("--limit-train") + 1] = "64"
        argv += ["--limit-dev", "64"]
    record = timed([sys.executable, "-m", "minift", *argv, "--no-progress"], env)
    record["table"] = [line for line in record.pop("stdout").splitlines()
                       if line.startswith("|")]
    record["notice"] = [line for line in record.pop("stderr").splitlines()
                        if line.startswith("minift: ") and " thread" in line]
    record["readme_command"] = shlex.join(command)
    return record


def run_suite(env: dict[str, str]) -> dict:
    record = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env)
    closing = record.pop("stdout").strip().splitlines()[-1].strip("= ")
    record.pop("stderr")
    record["summary"] = closing
    record["counts"] = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", closing)}
    return record


def report(runs: list[dict]) -> str:
    lines = ["# The README's two commands", "",
             "`python benchmarks/readme_commands.py`: the README's main command and `python -m "
             "pytest`, each in a fresh process, minift choosing its threads. \"Busy\" is the "
             f"cores other jobs kept busy just before (minift's /proc/stat reading; under "
             f"{IDLE_CORES} is idle).", ""]
    for run in runs:
        info = run["machine"]
        lines += [f"## {info['cpu']} ({info['cpu_count']} CPUs, {info['threads']} torch "
                  f"threads{', ' + info['gpu'] if info['gpu'] else ''})", "",
                  f"torch {info['torch']}, Python {info['python']}; code {run['commit']}, "
                  f"{run['date']}.", "", "| command | wall s | CPU s | busy cores before |",
                  "|---|---:|---:|---:|"]
        for key in ("job", "suite"):
            if key in run:
                r = run[key]
                lines.append(f"| `{r.get('readme_command', 'python -m pytest')}` | "
                             f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['busy_cores_before']} |")
        lines += ["", "The job's table:", "", "```", *run["job"]["table"], "```", ""]
        if "suite" in run:
            lines += [f"The suite: {run['suite']['summary']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-suite", action="store_true", help="run the job only")
    parser.add_argument("--smoke", action="store_true", help="the job on 64 sentences, no "
                        "suite, written to a temporary folder (a check of the wiring)")
    parser.add_argument("--out", type=Path, default=None, help="folder of the result files")
    args = parser.parse_args(argv)
    results = args.out or (Path(tempfile.mkdtemp(prefix="readme-")) if args.smoke else RESULTS)
    env = user_env()
    info = machine(env)
    key = machine_key(info)
    run = {"machine": info, "commit": commit(), "smoke": args.smoke,
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(f"{key}: the README's main command", flush=True)
    with tempfile.TemporaryDirectory(prefix="minift-readme-") as work:
        run["job"] = run_job(main_command(), Path(work) / "sst2", env, args.smoke)
    print(f"  {run['job']['wall_s']} s wall, {run['job']['cpu_s']} s CPU", flush=True)
    if not (args.no_suite or args.smoke):
        print("python -m pytest", flush=True)
        run["suite"] = run_suite(env)
        print(f"  {run['suite']['wall_s']} s wall: {run['suite']['summary']}", flush=True)

    path = results / f"{NAME}.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    previous = [r for r in runs if machine_key(r["machine"]) == key]
    if "suite" not in run and previous and "suite" in previous[0] and not args.smoke:
        run["suite"] = previous[0]["suite"]  # --no-suite keeps this machine's last suite time
    runs = [r for r in runs if machine_key(r["machine"]) != key] + [run]
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    path.with_suffix(".md").write_text(report(runs))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
