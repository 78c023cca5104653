"""The package layout: every import of sdvar_lib (lazy and TYPE_CHECKING ones included) points downwards.

Layers, lowest first (a module may import its own layer's modules and every lower layer):

    util < models, data < sdvar < fast < samples < eval < viz < bench, tiny < the top level

The top level is the public face (``sdvar_lib/__init__.py``) and the command modules
(``sdvar_lib/<command>.py``, ``__main__.py``); no sub-package imports them. ``bench`` and ``tiny``
share a rank and must not import each other. A cycle between modules fails too, inside a layer as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdvar_lib"
RANKS = {"util": 0, "models": 1, "data": 1, "sdvar": 2, "fast": 3, "samples": 4, "eval": 5, "viz": 6, "bench": 7, "tiny": 7}
TOP = 10


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else "<top>"


def _rank(module: str) -> int:
    return RANKS.get(_layer(module), TOP)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def sdvar_imports() -> dict[str, set[str]]:
    """Every module of the package -> the sdvar_lib modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "sdvar_lib"}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, path.name == "__init__.py")
                if base.split(".")[0] != "sdvar_lib":
                    continue
                for alias in node.names:  # `from sdvar_lib.x import y` may import the module x.y
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


EDGES = sdvar_imports()


def test_the_scan_sees_the_package():
    assert len(EDGES) > 30
    assert "sdvar_lib.models.sampling" in EDGES["sdvar_lib.models.var"]
    assert "sdvar_lib.sdvar.decoder" in EDGES["sdvar_lib.sdvar.registry"]
    assert {_layer(m) for m in EDGES} >= set(RANKS) | {"<top>"}


@pytest.mark.parametrize("module", sorted(EDGES))
def test_imports_point_downwards(module):
    upward = [t for t in sorted(EDGES[module]) if _rank(t) > _rank(module)
              or (_rank(t) == _rank(module) and _layer(t) != _layer(module))]
    if _rank(module) < TOP:  # a sub-package never imports the public face or a command module
        upward += [t for t in sorted(EDGES[module]) if _rank(t) == TOP and t not in upward]
    assert not upward, f"{module} ({_layer(module)}) imports from a higher or sibling layer: {upward}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(EDGES[m]):
            if t == "sdvar_lib":  # the public face imports everything; sub-packages never import it (above)
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(EDGES):
        if m not in state:
            visit(m)


def test_the_public_face_exports_what_it_imports():
    import sdvar_lib

    missing = [n for n in sdvar_lib.__all__ if not hasattr(sdvar_lib, n)]
    assert not missing
    for name in ("SDVAR", "load_pair", "VAR", "VQVAE", "build_vae", "build_var", "get_method", "Method",
                 "make_fast_sdvar", "compare_images", "image_grid", "make_interactive"):
        assert name in sdvar_lib.__all__


def test_notebooks_use_only_the_public_face():
    import json

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                stripped = line.strip()
                if stripped.startswith(("from sdvar_lib", "import sdvar_lib")):
                    assert stripped.startswith("from sdvar_lib import "), f"{nb.name}: {stripped}"
                assert "._" not in stripped.split("#")[0].replace("__", ""), f"{nb.name} calls a private name: {stripped}"
