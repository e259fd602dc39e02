"""The rooms of the project and who may import whom (docs/layout.md): a new cross-side import fails here.

Every module's imports are read from its syntax tree (nothing is imported), relative ones resolved against the
module's own package, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("common", "client", "server", "api", "enclave", "simulations", "fedfingpt")

# room -> the project's rooms it may import (besides itself)
ALLOWED = {
    "api": {"enclave"},  # the SDK verifies the service's attestation with the enclave's verifier
    "common": set(),
    "enclave": {"common"},
    "client": {"common", "enclave"},
    "server": {"common", "enclave", "api"},
    "simulations": {"common", "client", "server"},
    "fedfingpt": {"common", "client", "server", "api", "enclave", "simulations"},  # the command line
}


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts if parts[0] == "fedfingpt" else ["fedfingpt", *parts]


def project_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, room) of every import of one of the project's rooms in the module at `path` (its text, or `source`)."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    mod = _module_parts(path)
    package = mod if path.name == "__init__.py" else mod[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                names = [".".join(target + ([a.name] if not node.module else [])) for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "fedfingpt":
                continue
            room = parts[1] if len(parts) > 1 and parts[1] in ROOMS else "fedfingpt"
            found.append((node.lineno, room))
    return found


def _sources(room: str) -> list[Path]:
    return sorted(p for p in (REPO / room).rglob("*.py") if "_pb2" not in p.name)


def test_no_room_imports_a_side_it_must_not():
    wrong = []
    for room in ROOMS:
        for path in _sources(room):
            for line, target in project_imports(path):
                if target != room and target not in ALLOWED[room]:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}/")
    assert not wrong, "imports across the sides (docs/layout.md says who may import whom):\n" + "\n".join(wrong)


def test_every_room_is_checked():
    rooms = {p.parent.relative_to(REPO).parts[0] for p in REPO.glob("*/__init__.py")}
    assert rooms <= set(ROOMS), f"new package folder(s) {rooms - set(ROOMS)}: give them a line in ALLOWED"


@pytest.mark.parametrize("source, where, room", [
    ("from ..server.app import x\n", "client/probe.py", "server"),
    ("from ..simulations import partition\n", "client/probe.py", "simulations"),
    ("import fedfingpt.client.bank\n", "server/probe.py", "client"),
    ("def f():\n    from ...client import bank\n", "server/inference/probe.py", "client"),
    ("from . import bank\n", "client/__init__.py", "client"),
])
def test_the_walk_sees_relative_absolute_and_lazy_imports(source, where, room):
    assert [r for _, r in project_imports(REPO / where, source)] == [room]
