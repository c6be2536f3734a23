"""The engine stays in small pieces: no function over 50 lines, and the exit rule and the
routing live in one module (cascade.py) that everything else calls."""
from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "ashem_engine"
MAX_LINES = 50
ROUTING = {"route", "advance", "sparse_block", "evaluate"}  # cascade.py's own


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_the_engine_is_longer_than_50_lines():
    long = [f"{path.name}:{f.lineno} {f.name} {f.end_lineno - f.lineno + 1}"
            for path in sorted(ENGINE.glob("*.py")) for f in functions(path)
            if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert long == []


def test_routing_is_defined_in_the_cascade_only():
    elsewhere = [f"{path.name}:{f.lineno} {f.name}" for path in sorted(ENGINE.glob("*.py"))
                 if path.name != "cascade.py" for f in functions(path) if f.name in ROUTING]
    assert elsewhere == []
    assert not (ENGINE / "routing.py").exists() and not (ENGINE / "inference.py").exists()
