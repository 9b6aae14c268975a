"""The package's layers (DESIGN.md §2) as an import rule: a module imports only modules of its own layer or lower
ones. Read from the source (every import, including those inside functions), so a new upward import fails here
before it becomes a cycle or drags Lightning into inference."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "clamp_pl"

#: lowest first; a module's layer is its longest matching prefix
LAYERS: dict[str, int] = {
    "clamp_pl.core": 0, "clamp_pl.codecs": 0, "clamp_pl.data.metainfo": 0, "clamp_pl.data.vocabulary": 0,
    "clamp_pl.formats": 1,
    "clamp_pl.models": 2, "clamp_pl.spec": 2,
    "clamp_pl.inference": 3, "clamp_pl.api": 3,
    "clamp_pl.evaluation": 4,
    "clamp_pl.data": 5,
    "clamp_pl.training": 6,
    "clamp_pl.cli": 7, "clamp_pl.tools": 7, "clamp_pl.train": 7, "clamp_pl.eval": 7, "clamp_pl.predict": 7,
    "clamp_pl.export": 7, "clamp_pl": 7,
}


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clamp_pl")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.startswith("clamp_pl"):
                found.add(name)
    return found


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for imported in imports_of(path, module):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})")
    assert not upward, "\n".join(upward)


def test_the_rule_sees_an_upward_import(tmp_path):
    """The check itself: an import of training from inference is found, relative or absolute."""
    assert layer_of("clamp_pl.inference.probe") == 3 and layer_of("clamp_pl.training.module") == 6
    src = tmp_path / "probe.py"
    src.write_text("from ..training import module\nimport clamp_pl.training.optim\n")
    assert imports_of(src, "clamp_pl.inference.probe") == {"clamp_pl.training", "clamp_pl.training.optim"}
