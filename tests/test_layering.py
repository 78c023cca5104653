"""The package layout: every import of sdvar_lib (lazy and TYPE_CHECKING ones included) points downwards.

Layers, lowest first (a module may import its own layer's modules and every lower layer):

    util < models, data < sdvar < fast < samples < eval < viz < bench, tiny, demo < the top level

The top level is the public face (``sdvar_lib/__init__.py``, ``compat.py``) and the command shims
(``sdvar_lib/<command>.py``, ``__main__.py``: each imports its command's ``cli.py``); no sub-package
imports them. ``bench``, ``tiny`` and ``demo`` share a rank and must not import each other. A cycle
between modules fails too, inside a layer as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdvar_lib"
RANKS = {"util": 0, "models": 1, "data": 1, "sdvar": 2, "fast": 3, "samples": 4, "eval": 5, "viz": 6,
         "bench": 7, "tiny": 7, "demo": 7}
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


COMMANDS = {  # the command's shim -> the cli module that holds its parser and entry point
    "sdvar_lib.__main__": "sdvar_lib.demo.cli",
    "sdvar_lib.sample": "sdvar_lib.samples.cli",
    "sdvar_lib.evaluate": "sdvar_lib.eval.cli",
    "sdvar_lib.fid": "sdvar_lib.eval.cli",
    "sdvar_lib.train_tiny": "sdvar_lib.tiny.cli",
    "sdvar_lib.bench.__main__": "sdvar_lib.bench.cli",
    "sdvar_lib.bench_plot": "sdvar_lib.bench.cli",
}


def _parses_arguments(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    defines_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    imports_argparse = any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names) for n in ast.walk(tree))
    return defines_main or imports_argparse


def test_every_command_is_a_shim_of_its_package_cli():
    top_level = {m for m in EDGES if _layer(m) == "<top>"} - {"sdvar_lib", "sdvar_lib.compat"}
    assert top_level | {"sdvar_lib.bench.__main__"} == set(COMMANDS)
    for shim, cli in COMMANDS.items():
        assert EDGES[shim] == {cli}, f"{shim} must import only {cli}, imports {sorted(EDGES[shim])}"
        path = PACKAGE.joinpath(*shim.split(".")[1:]).with_suffix(".py")
        assert len(path.read_text().splitlines()) <= 10, f"{path.name} is a shim of a few lines"


def test_only_cli_modules_parse_arguments():
    """Library modules keep no ``main`` and no argparse: a command's code is the ``cli.py`` of its package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if _layer(name) == "<top>" or path.name in ("cli.py", "__main__.py"):
            continue
        assert not _parses_arguments(path), f"{name} parses command-line arguments: move that into its package's cli.py"


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
