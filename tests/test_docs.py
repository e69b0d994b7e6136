"""Docs follow the code: every path and every dotted module name that the README, the
architecture page, the docs and the docstrings name exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"(?<![\w/.-])((?:sync_server|client_sdk|conflict|tests|vatra_devtools|docs"
                  r"|loadtests|deploy)/[\w./*-]*[\w*])")
DOTTED = re.compile(r"(?<![\w/.-])((?:sync_server|client_sdk|conflict|vatra_devtools|loadtests)"
                    r"(?:\.[A-Za-z_]\w*)+)")


def _texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    for package in ("sync_server", "client_sdk", "conflict", "vatra_devtools", "loadtests",
                    "tests"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            obj: object = importlib.import_module(module)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_named_path_and_module_exists() -> None:
    missing = []
    for f in _texts():
        text = f.read_text()
        for m in PATH.finditer(text):
            path = m.group(1).split("::")[0].rstrip(".")
            found = list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
            if not found:
                missing.append(f"{f.relative_to(ROOT)}: {path}")
        for m in DOTTED.finditer(text):
            if not _resolves(m.group(1)):
                missing.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert missing == []
