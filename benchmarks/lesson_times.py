"""How long each lesson takes in quick mode (or, with --full, its full run) on this machine: the
times the README quotes.

Each `lessons/NN_*.py` runs as tests/test_lessons.py runs it: in a fresh interpreter, from the
repository root, with MINIFT_QUICK=1 (not with --full), HF_HUB_OFFLINE=1 and the repository first
on PYTHONPATH.
The wall-clock seconds and the CPU seconds of the lesson's process (and its children) are
recorded with the machine: the CPU model (from /proc/cpuinfo), the torch threads a lesson gets,
the GPU if a lesson would use one, and the load average before the lesson started (a busy machine
makes every time longer; run this on an idle one).

`benchmarks/results/lesson_times.json` keeps one entry per machine (CPU model, threads, GPU): a
run replaces its own machine's times and keeps the others', so that the markdown table beside it
gives each lesson's time on every machine measured and the range over them. `--only 01 03` runs
some lessons and updates only those. `--full` runs the lessons' full modes and keeps their times
apart, in `lesson_times_full.json` and `.md`, written after every lesson (full runs are long).
`--merge DIR ...` gathers the lessons that runs with `--out DIR` timed side by side (groups of
long full runs at once, one thread each) into one machine's entry, and says so: such wall times
are not an idle machine's, the CPU seconds nearly are.

    python benchmarks/lesson_times.py                  # every lesson, torch's default threads
    python benchmarks/lesson_times.py --threads 2      # OMP_NUM_THREADS=2 for every lesson
    python benchmarks/lesson_times.py --only 01 04     # lessons 01 and 04 only
    python benchmarks/lesson_times.py --full --threads 1 --only 13 12 11   # full runs, in that order
    python benchmarks/lesson_times.py --full --merge /tmp/a /tmp/b      # gather runs made apart
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from minift.fast.cpu_kernels import cpu_model  # the package's one reading of /proc/cpuinfo

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]_*.py"))
RESULTS = REPO / "benchmarks" / "results"
NAME = "lesson_times"
TAIL_CHARS = 3000
# What a lesson's interpreter says about itself: torch's version, its threads, the GPU it would use.
PROBE = ("import json, torch; print(json.dumps({'torch': torch.__version__, "
         "'threads': torch.get_num_threads(), 'gpu': torch.cuda.get_device_name(0) "
         "if torch.cuda.is_available() else None}))")


def lesson_env(threads: int | None, full: bool = False) -> dict[str, str]:
    """The environment tests/test_lessons.py gives a lesson (without MINIFT_QUICK for a full
    run), with OMP_NUM_THREADS if asked."""
    env = dict(os.environ)
    env.pop("MINIFT_QUICK", None)
    if not full:
        env["MINIFT_QUICK"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env



def machine(env: dict[str, str]) -> dict:
    """The machine as a lesson sees it: CPU model and count, torch's threads, the GPU."""
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, check=True,
                           capture_output=True, text=True)
    seen = json.loads(probe.stdout)
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": seen["threads"],
            "gpu": seen["gpu"], "torch": seen["torch"], "python": platform.python_version()}


def threads(n: int) -> str:
    return f"{n} torch thread" + ("" if n == 1 else "s")


def machine_key(info: dict) -> str:
    """How the table names a machine: CPU model, threads, and the GPU when there is one."""
    key = f"{info['cpu']}, {threads(info['threads'])}"
    return key + (f", {info['gpu']}" if info["gpu"] else "")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def time_lesson(lesson: Path, env: dict[str, str], timeout: float,
                keep: Path | None = None) -> dict:
    """Run one lesson; its wall and CPU seconds, and whether it passed (its output into
    ``keep``/NN_topic.txt when given: what it printed, to read its numbers afterwards)."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(lesson.relative_to(REPO))], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        returncode, stderr = done.returncode, done.stderr
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{lesson.stem}.txt").write_text(done.stdout + done.stderr)
    except subprocess.TimeoutExpired:
        returncode, stderr = None, f"ran past {timeout:.0f} s"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": round(load, 2),
              "passed": returncode == 0}
    if returncode != 0:
        record["error"] = stderr[-TAIL_CHARS:]
    return record


def table(runs: list[dict]) -> str:
    """Lessons down, machines across, then the range over the machines (passed runs only)."""
    names = sorted({name for run in runs for name in run["lessons"]})
    header = ["lesson", *(f"machine {i + 1}" for i in range(len(runs))), "range (s, wall)"]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]
    for name in names:
        cells, times = [name], []
        for run in runs:
            record = run["lessons"].get(name)
            if record is None:
                cells.append("")
            elif not record["passed"]:
                cells.append("failed")
            else:
                cells.append(f"{record['wall_s']:.0f} s ({record['cpu_s']:.0f} CPU-s)")
                times.append(record["wall_s"])
        span = f"{min(times):.0f}-{max(times):.0f}" if len(times) > 1 else (
            f"{times[0]:.0f}" if times else "")
        rows.append([*cells, span])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def report(runs: list[dict], full: bool = False) -> str:
    command, mode = (("python benchmarks/lesson_times.py --full", "MINIFT_QUICK unset")
                     if full else ("python benchmarks/lesson_times.py", "MINIFT_QUICK=1"))
    lines = [f"# Lessons in {'full' if full else 'quick'} mode: wall-clock seconds per lesson", "",
             f"`{command}` ({mode}, each lesson in a fresh "
             "interpreter, as tests/test_lessons.py runs them). The machines:", ""]
    for i, run in enumerate(runs):
        info = run["machine"]
        loads = [r["load_before"] for r in run["lessons"].values()]
        lines.append(
            f"- machine {i + 1}: {info['cpu']} ({info['cpu_count']} CPUs, "
            f"{threads(info['threads'])}{', ' + info['gpu'] if info['gpu'] else ''}), "
            f"torch {info['torch']}, Python "
            f"{info['python']}; code {run['commit']}, {run['date']}; load average before each "
            f"lesson {min(loads):.2f}-{max(loads):.2f}" + (f"; {run['note']}" if "note" in run else "")
        )
    lines += ["", table(runs), "",
              "CPU seconds: the lesson's process and its children (with one torch thread, about "
              "the wall time on an idle machine). A machine that other jobs share makes these times longer.",
              ""]
    return "\n".join(lines)


def merge(folders: list[Path], out: Path, full: bool) -> int:
    """One entry per machine from the result files of runs made side by side in ``folders``."""
    name = NAME + ("_full" if full else "")
    path = out / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    parts = [run for folder in folders for run in json.loads((folder / f"{name}.json").read_text())
             ["runs"]]
    for key in dict.fromkeys(machine_key(part["machine"]) for part in parts):
        group = [part for part in parts if machine_key(part["machine"]) == key]
        runs = [run for run in runs if machine_key(run["machine"]) != key]
        runs.append({"lessons": dict(sorted({k: v for part in group
                                             for k, v in part["lessons"].items()}.items())),
                     "machine": group[0]["machine"],
                     "commit": ", ".join(sorted({part["commit"] for part in group})),
                     "date": min(part["date"] for part in group),
                     "note": f"the lessons ran in {len(group)} groups side by side, so the "
                             "wall times are not an idle machine's (the CPU seconds nearly are)"})
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    (out / f"{name}.md").write_text(report(runs, full))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NN", help="lesson numbers, e.g. 01 04")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for every lesson (default: torch's own choice)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a lesson may take")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--full", action="store_true",
                        help="the lessons' full runs (MINIFT_QUICK unset), kept in lesson_times_full.*")
    parser.add_argument("--keep-output", type=Path, metavar="DIR",
                        help="write what each lesson printed into DIR/NN_topic.txt")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                        help="gather the runs that --out DIR wrote, run side by side, into --out")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.full)

    lessons = LESSONS
    if args.only:  # in the order given
        lessons = [p for n in args.only for p in LESSONS if p.name[:2] == n]
        unknown = sorted(set(args.only) - {p.name[:2] for p in lessons})
        if unknown:
            parser.error(f"no lesson numbered {', '.join(unknown)} in {REPO / 'lessons'}")
    env = lesson_env(args.threads, args.full)
    info = machine(env)
    key = machine_key(info)
    print(f"{key}; {len(lessons)} lessons in {'full' if args.full else 'quick'} mode")

    name = NAME + ("_full" if args.full else "")
    path = args.out / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    run = next((r for r in runs if machine_key(r["machine"]) == key), None)
    if run is None:
        run = {"lessons": {}}
        runs.append(run)
    run.update(machine=info, commit=commit(),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    failed = []
    for lesson in lessons:
        record = time_lesson(lesson, env, args.timeout, args.keep_output)
        run["lessons"][lesson.name] = record
        status = "ok" if record["passed"] else "FAILED"
        print(f"  {lesson.name:<28} {record['wall_s']:7.1f} s wall {record['cpu_s']:7.1f} s CPU "
              f"(load {record['load_before']:.2f}) {status}", flush=True)
        if not record["passed"]:
            failed.append(lesson.name)
            print(record["error"], file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)  # after every lesson: full runs are long
        path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(report(runs, args.full))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
