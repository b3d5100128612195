"""The codebase stays ruff-clean (lint and format) and its modules in the order of the
README's Layout table, as tests so CI holds both."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = [
    p
    for p in ("rnn_jax", "tests", "experiments", "benchmarks", "scripts", "notebooks")
    if (ROOT / p).is_dir()
]


def test_ruff_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _layout() -> list[str]:
    """The modules in the order of the README's Layout table: the order the data flows."""
    readme = (ROOT / "README.md").read_text("utf-8")
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `rnn_jax/(\w+)\.py` \|", table, flags=re.MULTILINE)


def test_modules_import_only_modules_above_them() -> None:
    """Every module of the package is in the README's Layout table, and imports (at the
    top or inside a function) only modules listed above it: no import circle, no arrow up."""
    layout = _layout()
    modules = sorted(p.stem for p in (ROOT / "rnn_jax").glob("*.py") if p.stem != "__init__")
    assert sorted(layout) == modules
    for position, name in enumerate(layout):
        tree = ast.parse((ROOT / "rnn_jax" / f"{name}.py").read_text("utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "rnn_jax":
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rnn_jax."):
                imported.add(node.module.split(".")[1])
        above = set(layout[:position])
        assert imported - {"__version__"} <= above, (name, sorted(imported - above))
