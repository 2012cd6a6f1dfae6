"""The model package's layers (docs/ARCHITECTURE.md): each imports only the layers below it, and no library
module imports a command line. Read from the source's import statements, top level and inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mosaic_model"
# Bottom to top; a module may import its own layer and those below it, never one above.
LAYERS = {"runtime": 0, "models": 1, "data": 1, "evaluation": 2, "training": 3, "hf": 4, "cli": 5}


def _layer(module: str) -> str:
    """The layer of a dotted ``mosaic_model`` module name ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``mosaic_model`` modules a file imports (relative imports resolved), anywhere in the file."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mosaic_model")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("mosaic_model"):
                found.add(module)
                found |= {f"{module}.{alias.name}" for alias in node.names
                          if (PACKAGE.parent / f"{module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()}
    return found


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if _layer(_module_name(p)) not in ("cli", ""))


def test_every_file_is_in_a_layer():
    layers = {_layer(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert layers == set(LAYERS) | {""}, layers


@pytest.mark.parametrize("path", LIBRARY, ids=[str(p.relative_to(PACKAGE)) for p in LIBRARY])
def test_no_library_module_imports_a_command_line(path):
    assert not [m for m in imports_of(path) if _layer(m) == "cli"]


@pytest.mark.parametrize("path", LIBRARY, ids=[str(p.relative_to(PACKAGE)) for p in LIBRARY])
def test_imports_run_down_the_layers(path):
    mine = _layer(_module_name(path))
    upward = [m for m in imports_of(path) if _layer(m) and m != "mosaic_model"
              and (LAYERS[_layer(m)] > LAYERS[mine] or (LAYERS[_layer(m)] == LAYERS[mine] and _layer(m) != mine))]
    assert not upward, f"{path.name} ({mine}) imports {upward}"


def test_the_walk_sees_relative_and_function_level_imports(tmp_path):
    """The checker itself: it finds an import written inside a function and a relative one."""
    probe = PACKAGE / "training" / "loop.py"
    found = imports_of(probe)
    assert "mosaic_model.training.checkpoint" in found and "mosaic_model.models.build" in found
