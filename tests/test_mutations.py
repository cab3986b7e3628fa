"""benchmarks/mutations.py's table against the current source: every planted bug still applies
where it was planted, and every test named to catch it still exists. (Running the mutations
takes minutes: `python benchmarks/mutations.py`; this only keeps the table from rotting.)"""

import ast
import functools
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import mutations  # noqa: E402


def test_ids_are_unique_and_the_table_is_not_empty():
    ids = [m.id for m in mutations.MUTATIONS]
    assert len(ids) == len(set(ids)) >= 25


@functools.cache
def functions_of(path: str) -> set[str]:
    """The names of the top-level functions a test file defines."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.id)
def test_the_snippet_occurs_once_and_the_bug_parses(mutation):
    source = (REPO / mutation.file).read_text(encoding="utf-8")
    assert source.count(mutation.snippet) == 1, (mutation.id, mutation.file)
    assert mutation.bug != mutation.snippet
    mutated = mutations.mutated_text(mutation)
    assert mutated != source
    ast.parse(mutated, filename=mutation.file)


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.id)
def test_the_tests_named_exist(mutation):
    """Each node id's file exists and defines its test function; a bare file exists."""
    files = mutations.test_files(mutation)
    assert files, mutation.tests
    for path in files:
        assert (REPO / path).is_file() and path.startswith("tests/test_"), (mutation.id, path)
    for arg in mutation.tests:
        if "::" in arg and not arg.startswith("-"):
            path, _, name = arg.partition("::")
            assert name.split("[")[0] in functions_of(path), (mutation.id, arg)
