"""The app's code stays in small pieces that do not reach into each other: no function over
50 lines, and screens and widgets never import the app (they post messages to it)."""
from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "ashem_app"
MAX_LINES = 50


def test_no_function_in_the_app_is_longer_than_50_lines():
    long = []
    for path in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(APP)}:{node.lineno} {node.name} {lines}")
    assert long == []


def test_screens_and_widgets_do_not_import_the_app():
    for folder in ("screens", "widgets"):
        for path in sorted((APP / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    assert node.module not in ("app", "ashem_app.app"), path
                    assert "AshemApp" not in [a.name for a in node.names], path
