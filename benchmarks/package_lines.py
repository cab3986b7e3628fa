"""The size of the package at a git revision: what issue #30's line goal is measured with.

Question: how many lines does ``minift/`` hold, and of what kind (code, docstrings, comments,
blank), file by file and layer by layer; which definitions are long; and which layer imports
which? The revision is read from git (``git archive``), so two revisions compare side by side
without a checkout:

    python benchmarks/package_lines.py                 # the working tree
    python benchmarks/package_lines.py 2f309d1 HEAD    # two revisions, one after the other
    python benchmarks/package_lines.py HEAD --long 80  # definitions over 80 lines (default 80)

"Lines" is ``wc -l`` of every ``.py`` file; a docstring line is a line of a module's, class's
or function's docstring (found by ``ast``), a comment line one whose first character is ``#``,
everything else that is not blank is code. Import edges count ``from minift.X... import``
statements by the layer (the first folder under ``minift/``) of the importing file and of X;
``.`` is the package's own ``__init__.py`` and ``__main__.py`` (a flat package has no layers).
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("code", "docstring", "comment", "blank")


def sources(revision: str | None) -> dict[str, str]:
    """``{path under minift/: text}`` of every .py file, at ``revision`` (None: the work tree)."""
    if revision is None:
        return {str(p.relative_to(REPO / "minift")): p.read_text(encoding="utf-8")
                for p in sorted((REPO / "minift").rglob("*.py"))}
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "minift"], cwd=REPO,
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {member.name.removeprefix("minift/"): tar.extractfile(member).read().decode()
                for member in sorted(tar.getmembers(), key=lambda m: m.name)
                if member.isfile() and member.name.endswith(".py")}


def line_kinds(text: str) -> Counter:
    """How many lines of ``text`` are code, docstring, comment and blank."""
    lines = text.splitlines()
    kinds = ["blank" if not line.strip() else
             "comment" if line.strip().startswith("#") else "code" for line in lines]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                for index in range(first.lineno - 1, first.end_lineno):
                    kinds[index] = "docstring"
    return Counter(kinds)


def long_definitions(path: str, text: str, limit: int) -> list[tuple[int, str]]:
    """``(lines, "path:line name")`` of every class or function longer than ``limit`` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((length, f"{path}:{child.lineno} {prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(text), "")
    return found


def layer(path: str) -> str:
    return path.split("/")[0] if "/" in path else "."


def import_edges(path: str, text: str) -> Counter:
    """``(this file's layer, imported layer)`` for each ``from minift.X import`` statement."""
    edges = Counter()
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                and node.module.startswith("minift.")):
            edges[layer(path), node.module.split(".")[1]] += 1
    return edges


def report(revision: str | None, limit: int) -> None:
    files = sources(revision)
    per_layer, kinds, edges, long = defaultdict(list), Counter(), Counter(), []
    for path, text in files.items():
        count = line_kinds(text)
        kinds += count
        per_layer[path.rpartition("/")[0] or "."].append((path.split("/")[-1],
                                                          sum(count.values())))
        edges += import_edges(path, text)
        long += long_definitions(path, text, limit)
    folders = {path.split("/")[0] for path in files if "/" in path}
    edges = Counter({(a, b): n for (a, b), n in edges.items() if b in folders})  # layers only
    total = sum(kinds.values())
    print(f"## minift/ at {revision or 'the working tree'}: {total:,} lines in {len(files)} files")
    print("  " + ", ".join(f"{kind} {kinds[kind]:,}" for kind in KINDS))
    for name, rows in sorted(per_layer.items()):
        rows = [(file, n) for file, n in rows if n]
        listed = ", ".join(f"{file} {n}" for file, n in rows)
        print(f"  {name}/ ({sum(n for _, n in rows):,}): {listed}")
    print("  imports by layer: " + (", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(edges.items()))
                                    or "none (one flat folder)"))
    print(f"  definitions over {limit} lines ({len(long)}):")
    for length, where in sorted(long, reverse=True):
        print(f"    {length:4d}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="*", help="git revisions (none: the working tree)")
    parser.add_argument("--long", type=int, default=80, help="list definitions over this")
    args = parser.parse_args()
    for revision in args.revisions or [None]:
        report(revision, args.long)


if __name__ == "__main__":
    main()
