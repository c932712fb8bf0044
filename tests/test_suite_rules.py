"""Rules the test suite keeps about itself: every test can fail."""

from __future__ import annotations

import ast

from tests.support import REPO

# Calls that fail a test by themselves: pytest.raises/warns/fail and assert_* helpers.
FAILING_CALLS = ("raises", "warns", "fail")


def _can_fail(test: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for node in ast.walk(test):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FAILING_CALLS or name.startswith("assert"):
                return True
    return False


def unasserted_tests(source: str) -> list[str]:
    """Names of the test functions in ``source`` that hold no assertion.

    >>> unasserted_tests("def test_a():\\n    x = 1\\ndef test_b():\\n    assert 1")
    ['test_a']
    """
    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not _can_fail(node)
    ]


def test_every_test_function_asserts_something():
    found = {
        f"{path.relative_to(REPO)}::{name}"
        for path in sorted((REPO / "tests").glob("test_*.py"))
        for name in unasserted_tests(path.read_text(encoding="utf-8"))
    }
    assert not found, f"test functions with no assert or pytest.raises: {sorted(found)}"
