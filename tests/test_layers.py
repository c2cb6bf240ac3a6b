"""The four layers (README "Four layers"): transport -> api -> core -> storage, arrows pointing down only.

Every module's imports are read from its source (also those inside functions and under TYPE_CHECKING):
a module of a lower layer never imports one of a higher layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
LAYERS = ["storage", "core", "api", "transport"]  # bottom to top


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "etcdlite" and parts[1] in LAYERS else None


def _imports(path: Path) -> set[str]:
    package = "etcdlite." + ".".join(path.relative_to(SERVER).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x`
    return found


def test_imports_point_down_only() -> None:
    wrong = []
    for layer in LAYERS:
        for path in sorted((SERVER / layer).rglob("*.py")):
            for module in _imports(path):
                target = _layer(module)
                if target is not None and LAYERS.index(target) > LAYERS.index(layer):
                    wrong.append(f"{path.relative_to(SERVER)} imports {module}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_check_sees_relative_imports() -> None:
    """The reader resolves ``from ..x import y`` as Python does (so the test above can fail)."""
    found = _imports(SERVER / "core" / "server.py")
    assert any(m.startswith("etcdlite.storage") for m in found), sorted(found)
