"""Every number README.md states is checked: counted here, or compared with the results file of
the benchmarks/ script that measured it (so a number changes by rerunning the script, not by
typing).

``test_every_number_of_the_readme_is_claimed`` takes the README's text without its fenced code
blocks (test_readme_commands.py runs the bash blocks and parses every ``minift`` line;
test_readme.py runs the Python example and checks the numbers of its comments; the example table
stays in), removes what each CLAIM below matches, and fails on any number left: a new number
needs a claim, and a claim its check. Digits inside a name (all-MiniLM-L6-v2, SST-2, v1.1,
``--nproc_per_node=2``, ``torch==2.13.0``) are not numbers here; the pin is checked with the
lowest torch. Each claim's check then runs as one test:

- counted here: the lessons, the main job's steps, the labels, the vocabulary, the parameters,
  the log interval, the seed default, /proc/stat's sample, torch's versions, CoNLL's columns,
  SetFit's defaults, the grid's syntax, MINIFT_ONEDNN's values, the test count (``slow``: it
  collects the suite);
- from benchmarks/results/: the job's and the suite's times and the job's table
  (``readme_commands.json``, by ``python benchmarks/readme_commands.py``), the cost of load
  (``threads.json``, by ``python benchmarks/threads.py``), the lessons' times
  (``lesson_times.json``, by ``python benchmarks/lesson_times.py``): the README's figure is the
  file's, rounded as the README writes it ("about": within 10%), on the machine the README
  names, and "idle" means under half a core kept busy by other jobs when it was measured
  (minift's own reading);
- the output folder's sizes: test_readme.py's main-command test measures them.

Where a results file is not there yet, its claims are strict xfails (the test fails until the
script has run; once it has, the claim must hold).
"""

import inspect
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from test_readme import (
    REPO,
    _env,
    _read,
    collected_tests,
    data_dir,
    minilm_classifier_parameters,
    readme_main_command,
    readme_output_sizes,
    vocabulary_size,
)

RESULTS = REPO / "benchmarks" / "results"
JOB_TIMES = RESULTS / "readme_commands.json"
SCRIPTS = {"lesson_times_full.json": "lesson_times.py --full"}  # a results file's script, if not its name
IDLE_CORES = 0.5  # benchmarks/readme_commands.py's bound for "idle"
NUMBER = re.compile(r"(?<![\w#.\-/=])\d+(?:[,.]\d+)*")  # not inside a name (L6, v1.1, SST-2)
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen"]


def prose() -> str:
    """README.md without its fenced code blocks (except the example table, a block of | rows),
    inline `code` shown as [code:...], whitespace collapsed to single spaces."""
    kept, block = [], None
    for line in _read(REPO / "README.md").splitlines():
        if line.startswith("```"):
            if block is not None and (block[:1] or [""])[0].startswith("|"):
                kept += ["```", *block, "```"]  # the example table stays
            block = [] if block is None else None
        elif block is not None:
            block.append(line)
        else:
            kept.append(line)
    text = re.sub(r"`([^`\n]+)`", r"[code:\1]", "\n".join(kept))
    return " ".join(text.split())


def _results(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _cpu_words(cpu: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon': how the README names a CPU."""
    words = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b|@.*$|\d+-Core", " ", cpu).split()
    return " ".join(words)


def job_run(cores: str, cpu: str) -> dict:
    """readme_commands.json's entry for the machine the README names (``2``, ``Intel Xeon``)."""
    runs = [r for r in _results(JOB_TIMES.name)["runs"]
            if r["machine"]["cpu_count"] == int(cores) and _cpu_words(r["machine"]["cpu"]) == cpu]
    assert runs, (f"{JOB_TIMES.name} has no run on a {cores}-core {cpu}: run `python "
                  f"benchmarks/readme_commands.py` there, or quote a machine it has")
    assert not runs[0]["smoke"], f"{JOB_TIMES.name}: the {cpu}'s run is a --smoke run"
    return runs[0]


def _idle(record: dict) -> None:
    busy = record["busy_cores_before"]
    assert busy is not None and busy < IDLE_CORES, (
        f"README.md says idle; other jobs kept {busy} cores busy when `{record['command']}` ran")


def _same_job(run: dict) -> None:
    assert run["job"]["readme_command"] == " ".join(readme_main_command()), (
        f"{JOB_TIMES.name} timed `{run['job']['readme_command']}`, not the README's command: "
        "rerun python benchmarks/readme_commands.py")


# ---- the checks, one a claim ---------------------------------------------------------------


def lessons(said: str) -> None:
    count = len(list((REPO / "lessons").glob("[0-9][0-9]_*.py")))
    assert said == WORDS[count - 1], f"README.md says {said} lessons; lessons/ holds {count}"


def job_budget(limit: str, steps: str, max_length: str) -> None:
    from minift.run.options import FinetuneOptions

    command = readme_main_command()
    value = {command[i]: command[i + 1] for i in range(len(command) - 1)}
    assert value["--limit-train"] == limit.replace(",", "") and value["--epochs"] == "1"
    assert value["--max-length"] == max_length
    batch = next(f.default for f in fields(FinetuneOptions) if f.name == "batch_size")
    assert int(steps) == math.ceil(int(value["--limit-train"]) / batch)


def job_time(cpu_s: str, wall_s: str, cores: str, cpu: str) -> None:
    run = job_run(cores, cpu)
    _same_job(run)
    _idle(run["job"])
    assert abs(float(cpu_s) - run["job"]["cpu_s"]) <= 0.1 * run["job"]["cpu_s"], run["job"]
    assert int(wall_s) == round(run["job"]["wall_s"]), run["job"]


def job_table(cores: str, cpu: str, table: str) -> None:
    run = job_run(cores, cpu)
    _same_job(run)
    assert table.split() == " ".join(run["job"]["table"]).split(), run["job"]["table"]


def load_cost(busy: str, steps: str, ratio_2: str, threads: str, ratio_1: str) -> None:
    result = _results("threads.json")
    assert "Xeon" in result["machine"]["cpu"], result["machine"]  # "on that Xeon"
    assert int(busy) == result["load"] and f"--max-steps {steps}" in " ".join(result["job"])
    ratios = result["summary"]["ratios"]
    assert ratio_2 == f"{ratios[f'{threads} threads: loaded / idle (train)']:.2f}", ratios
    assert ratio_1 == f"{ratios['1 thread: loaded / idle (train)']:.2f}", ratios


def proc_stat_sample(seconds: str) -> None:
    from minift.run.cli import busy_cores

    assert float(seconds) == inspect.signature(busy_cores).parameters["interval"].default


def seed_default(seed: str) -> None:
    from minift.run.options import FinetuneOptions

    assert int(seed) == next(f.default for f in fields(FinetuneOptions) if f.name == "seed")


def count_of_tests(tests: str) -> None:
    found = collected_tests()
    assert abs(found - int(tests.replace(",", ""))) <= 0.1 * found, (
        f"README.md says about {tests} tests; `python -m pytest` collects {found}")


def suite_time(minutes: str, seconds: str, cores: str, cpu: str, threads: str) -> None:
    run = job_run(cores, cpu)
    assert "suite" in run, f"{JOB_TIMES.name}: no suite time on that machine (--no-suite?)"
    _idle(run["suite"])
    assert divmod(round(run["suite"]["wall_s"]), 60) == (int(minutes), int(seconds)), run["suite"]
    assert int(threads) == run["machine"]["threads"], run["machine"]


def lesson_times(low: str, high: str, machines: str) -> None:
    runs = _results("lesson_times.json")["runs"]
    assert machines == WORDS[len(runs) - 1], f"lesson_times.json holds {len(runs)} machines"
    [run] = [r for r in runs if "Xeon" in r["machine"]["cpu"]]  # "on that Xeon"
    times = [r["wall_s"] for r in run["lessons"].values() if r["passed"]]
    assert (low, high) == (f"{min(times):.0f}", f"{max(times):.0f}"), sorted(times)


def generation(rows: str, seeds: str, bleu: str, ours: str, theirs: str, threads: str,
               cores: str, cpu: str) -> None:
    """The E2E sentence: generation_e2e.json's settings, beam-4 BLEU (the same for both: the
    paired difference is zero) and greedy tokens/s, on the machine named."""
    results = _results("generation_e2e.json")
    settings, summary, info = results["settings"], results["summary"], results["machine"]
    assert (int(rows.replace(",", "")), int(seeds)) == (settings["train_rows"],
                                                        len(settings["seeds"])), settings
    scores = summary["scores"]
    assert bleu == f"{scores['minift/beam4/bleu']['mean']:.2f}", scores["minift/beam4/bleu"]
    assert bleu == f"{scores['transformers/beam4/bleu']['mean']:.2f}"
    speed = summary["speed"]
    assert (ours, theirs) == (f"{speed['minift/greedy']['mean']:.0f}",
                              f"{speed['transformers/greedy']['mean']:.0f}"), speed
    assert (WORDS.index(threads) + 1, int(cores)) == (info["torch_threads"], info["cpu_count"])
    assert _cpu_words(info["cpu_model"]) == cpu, info


def lesson_full_times(low: str, high: str) -> None:
    """Full mode's CPU minutes (one thread) from lesson_times_full.json: every lesson passed."""
    [run] = [r for r in _results("lesson_times_full.json")["runs"]
             if "Xeon" in r["machine"]["cpu"] and r["machine"]["threads"] == 1]
    lessons = {p.name for p in (REPO / "lessons").glob("[0-9][0-9]_*.py")}
    assert set(run["lessons"]) == lessons, sorted(lessons ^ set(run["lessons"]))
    assert all(r["passed"] for r in run["lessons"].values()), "a full run failed"
    seconds = [r["cpu_s"] for r in run["lessons"].values()]
    assert (low, high) == (f"{min(seconds):.0f}", f"{max(seconds) / 60:.0f}"), sorted(seconds)


def torch_versions(lowest: str) -> None:
    import torch

    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"torch>={lowest}"' in pyproject, "README.md's lowest torch is not pyproject's"
    pins = set(re.findall(r"torch==([\d.]+)", _read(REPO / "README.md")))
    assert pins == {torch.__version__.split("+")[0]}, f"pinned {pins}, tested {torch.__version__}"


def lesson_on_torchrun(rank: str, number: str) -> None:
    [lesson] = (REPO / "lessons").glob(f"{number}_*.py")
    text = lesson.read_text(encoding="utf-8")
    assert "torchrun" in text and f"rank {rank}" in text, lesson.name


def labels(count: str) -> None:
    rows = (data_dir() / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert int(count) == len({row.rsplit("\t", 1)[1] for row in rows})


def sizes(number: str, unit: str, per_line: str | None) -> None:
    """Measured by test_readme.py's main-command test (check_sizes); here: it reads this cell."""
    cells = {cell for _, _, cell in readme_output_sizes().values()}
    assert f"{number} {unit}{per_line or ''}" in cells


def model_counts(millions: str) -> None:
    assert float(millions) == round(minilm_classifier_parameters(), 1)


def vocabulary(pieces: str) -> None:
    assert int(pieces.replace(",", "")) == vocabulary_size()


def log_interval(steps: str) -> None:
    from minift.core.loop import TrainConfig

    assert int(steps) == next(f.default for f in fields(TrainConfig) if f.name == "log_every")


def conll_columns(ner: str, pos: str) -> None:
    words = next(line.split() for line in (data_dir() / "conll2003" / "train.txt")
                 .read_text(encoding="utf-8").splitlines() if line.strip())
    assert re.fullmatch(r"O|[BI]-[A-Z]+", words[int(ner)]), words  # an IOB2 entity tag
    assert re.fullmatch(r"[A-Z$().,:\"']+", words[int(pos)]) and words[int(pos)] != "O", words


def setfit_defaults(shots: str, seeds: str) -> None:
    from minift.run.options import SetfitOptions

    default = {f.name: f.default for f in fields(SetfitOptions)}
    assert (int(shots), int(seeds)) == (default["shots"], default["seeds"]), default


def grid_syntax(grid: str) -> None:
    from minift.run.cli import build_parser

    args = build_parser().parse_args(["search", "finetune", "--task", "sst2", "--out", "x",
                                      "--grid", grid])
    assert args.grid == [grid] and all(float(v) > 0 for v in grid.split("=")[1].split(","))


def onednn_values(on: str, off: str) -> None:
    """The two values cpu_kernels takes, and a third it refuses (no timing is run)."""
    import os

    from minift.fast import cpu_kernels

    saved = os.environ.get(cpu_kernels.FORCE_VARIABLE)
    try:
        for value, takes in ((on, True), (off, True), ("2", False)):
            os.environ[cpu_kernels.FORCE_VARIABLE] = value
            try:
                cpu_kernels.onednn_is_faster.__wrapped__()
            except ValueError:
                assert not takes, f"MINIFT_ONEDNN={value} is refused"
            else:
                assert takes, f"MINIFT_ONEDNN={value} is taken"
    finally:
        if saved is None:
            os.environ.pop(cpu_kernels.FORCE_VARIABLE)
        else:
            os.environ[cpu_kernels.FORCE_VARIABLE] = saved


@dataclass(frozen=True)
class Claim:
    pattern: str  # over prose(); its groups are the check's arguments
    check: Callable[..., None]
    needs: str | None = None  # the results file it reads
    slow: bool = False
    many: bool = False  # the pattern matches several times (table cells)


CLAIMS = [
    Claim(r"(\w+) lessons teach it", lessons),
    Claim(r"fixed ([\d,]+)-sentence subset of SST-2 \(one epoch, (\d+) steps, max length (\d+)\)",
          job_budget),
    Claim(r"It takes about (\d+) CPU-seconds: (\d+) s on an idle (\d+)-core ([A-Z][\w ]+?) \(",
          job_time, needs=JOB_TIMES.name),
    Claim(r"on that Xeon, beside (\d+) busy processes, (\d+) training steps took ([\d.]+) times "
          r"as long as idle with (\d+) threads and ([\d.]+) times with one", load_cost),
    Claim(r"\(([\d.]+) s of \[code:/proc/stat\]\)", proc_stat_sample),
    Claim(r"It ends with this table \(on a (\d+)-core ([A-Z][\w ]+?)\): ``` (.*?) ```", job_table,
          needs=JOB_TIMES.name),
    Claim(r"\(\[code:--seed\], (\d+) by default\)", seed_default),
    Claim(r"That is about ([\d,]+) tests", count_of_tests, slow=True),
    Claim(r"they took (\d+) minutes (\d+) seconds on an idle (\d+)-core ([A-Z][\w ]+?) with "
          r"(\d+) threads", suite_time, needs=JOB_TIMES.name),
    Claim(r"Each lesson takes (\d+) s to (\d+) s in quick mode on that Xeon \((\w+) machines? "
          r"measured so far", lesson_times),
    Claim(r"trained on ([\d,]+) rows of its official dev set .*? over (\d+) seeds, .*? \(test "
          r"BLEU ([\d.]+) with 4 beams for both\), and minift's cached greedy decoding wrote "
          r"(\d+) tokens/s to \[code:generate\]'s (\d+) with (\w+) threads? of a (\d+)-core "
          r"([A-Z][\w ]+?) that", generation, needs="generation_e2e.json"),
    Claim(r"in full mode from (\d+) CPU-seconds to (\d+) CPU-minutes with one thread", lesson_full_times,
          needs="lesson_times_full.json"),
    Claim(r"any torch >= ([\d.]+) works", torch_versions),
    Claim(r"rank (\d+) writes, lesson (\d+) explains", lesson_on_torchrun),
    Claim(r"MiniLM with a (\d+)-label classifier", labels),
    Claim(r"\| ([\d.]+) (MB|kB)( a line)? \|", sizes, many=True),
    Claim(r"\(([\d.]+) M parameters\)", model_counts),
    Claim(r"WordPiece vocabulary \(([\d,]+) pieces\)", vocabulary),
    Claim(r"one JSON line every (\d+) steps", log_interval),
    Claim(r"\[code:--column (\d)\] NER, scored by entity F1; \[code:--column (\d)\] POS",
          conll_columns),
    Claim(r"\[code:--shots (\d+) --seeds (\d+)\]", setfit_defaults),
    Claim(r"\[code:--grid (lr=[\de.,+-]+)\]", grid_syntax),
    Claim(r"\[code:MINIFT_ONEDNN=(\d)\] or \[code:(\d)\] skips the timing", onednn_values),
]


def test_every_number_of_the_readme_is_claimed():
    text = prose()
    for claim in CLAIMS:
        found = list(re.finditer(claim.pattern, text))
        assert len(found) == 1 or (claim.many and found), (
            f"README.md: the claim {claim.pattern!r} matches {len(found)} times, not once: "
            "reword the README or the claim")
        text = re.sub(claim.pattern, " ", text)
    left = [f"{n.group(0)!r} in '...{text[max(0, n.start() - 60):n.end() + 30]}...'"
            for n in NUMBER.finditer(text)]
    assert not left, ("numbers in README.md that no test checks (add a Claim to "
                      "tests/test_readme_numbers.py, with a check):\n" + "\n".join(left))


def test_the_number_rules_see_numbers():
    """A test of the test: numbers are found, names with digits are not."""
    line = "about 930 tests, 5 minutes, 30,522 pieces, 0.7 kB; not SST-2, L6-v2, #32 or v1.1"
    assert NUMBER.findall(line) == ["930", "5", "30,522", "0.7"]
    assert _cpu_words("Intel(R) Xeon(R) Processor") == "Intel Xeon"
    assert _cpu_words("AMD EPYC 7B13 64-Core Processor") == "AMD EPYC 7B13"


def _params() -> list:
    params = []
    for claim in CLAIMS:
        marks = [pytest.mark.slow] if claim.slow else []
        if claim.needs and not (RESULTS / claim.needs).is_file():
            marks.append(pytest.mark.xfail(strict=True, reason=(
                f"benchmarks/results/{claim.needs} is not there yet: run "
                f"`python benchmarks/{SCRIPTS.get(claim.needs, Path(claim.needs).stem + '.py')}` "
                "on an idle machine")))
        params.append(pytest.param(claim, id=claim.check.__name__, marks=marks))
    return params


@pytest.mark.parametrize("claim", _params())
def test_readme_claim(claim: Claim):
    found = list(re.finditer(claim.pattern, prose()))
    assert found, f"README.md no longer says {claim.pattern!r}"
    for match in found:
        claim.check(*match.groups())


@pytest.mark.slow  # a finetune on 64 sentences in a fresh process
def test_the_times_script_writes_what_the_claims_read(tmp_path):
    """benchmarks/readme_commands.py --smoke writes a run the checks above can read (a smoke
    run is then refused: its times are not the README's command's)."""
    done = subprocess.run([sys.executable, "benchmarks/readme_commands.py", "--smoke", "--out",
                           str(tmp_path)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = json.loads((tmp_path / JOB_TIMES.name).read_text())["runs"]
    assert run["smoke"] and run["job"]["readme_command"] == " ".join(readme_main_command())
    header = [c.strip() for c in run["job"]["table"][0].strip("|").split("|")]
    assert header == ["", "loss", "accuracy", "f1"] and len(run["job"]["table"]) == 4
    assert run["job"]["wall_s"] > 0 and run["job"]["cpu_s"] > 0
    assert (tmp_path / "readme_commands.md").is_file()
