"""The package layout: every import of sdvar_lib (lazy and TYPE_CHECKING ones included) points downwards.

Layers, lowest first (a module may import its own layer's modules and every lower layer):

    util < models, data < sdvar < fast < samples < eval < viz < bench, tiny, demo < the top level

The top level is the public face (``sdvar_lib/__init__.py``), ``compat.py`` and the command shims
(``sdvar_lib/<command>.py``, ``__main__.py``: each imports its command's ``cli.py``); no sub-package
imports them. ``bench``, ``tiny`` and ``demo`` share a rank and must not import each other. A cycle
between modules fails too, inside a layer as well; an import made only for annotations (under
``if TYPE_CHECKING:``, never executed) counts for the direction of the layers but cannot close a cycle.

Faces: the top face is about a dozen names and does not import matplotlib; every sub-package has a
face (its ``__init__`` with ``__all__``). Notebooks and the harness (``test_framework/``) import from
the top face or a sub-package face, never from a module below a face.
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


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (annotations only, never executed)."""
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                nodes |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return nodes


def sdvar_imports(runtime_only: bool = False) -> dict[str, set[str]]:
    """Every module of the package -> the sdvar_lib modules it imports (anywhere in the file; with
    ``runtime_only`` leaving out the imports under ``if TYPE_CHECKING:``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_only(tree) if runtime_only else set()
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
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
RUNTIME_EDGES = sdvar_imports(runtime_only=True)


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
        for t in sorted(RUNTIME_EDGES[m]):
            if t == "sdvar_lib":  # the public face imports sub-packages; sub-packages never import it (above)
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(RUNTIME_EDGES):
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


def test_a_cycle_is_found():
    """The cycle check can fail: a planted edge back from the model to the decoder closes a cycle."""
    saved = RUNTIME_EDGES["sdvar_lib.models.sampling"]
    RUNTIME_EDGES["sdvar_lib.models.sampling"] = saved | {"sdvar_lib.models.var"}
    try:
        with pytest.raises(AssertionError, match="import cycle: .*sdvar_lib.models.var"):
            test_no_import_cycles()
    finally:
        RUNTIME_EDGES["sdvar_lib.models.sampling"] = saved


# ---- the faces ----------------------------------------------------------------------------------
FACES = ["sdvar_lib"] + [f"sdvar_lib.{layer}" for layer in RANKS]


@pytest.mark.parametrize("face", FACES)
def test_every_face_exports_what_it_names(face):
    import importlib

    module = importlib.import_module(face)
    names = getattr(module, "__all__", None)
    assert names, f"{face} has no __all__"
    assert len(set(names)) == len(names), f"{face}.__all__ repeats names"
    assert not [n for n in names if not hasattr(module, n)], f"{face}.__all__ names what it does not define"


def test_the_public_face_is_small_and_complete():
    import sdvar_lib

    assert len(sdvar_lib.__all__) <= 15, sorted(sdvar_lib.__all__)
    for name in ("load_pair", "ModelPair", "SDVAR", "make_pair_sdvar", "SamplingConfig", "SDVAROutput", "SDVARStats",
                 "get_method", "METHODS", "describe_setup", "pick_device"):
        assert name in sdvar_lib.__all__, name


def test_importing_the_public_face_imports_no_plotting_and_no_evaluation():
    import subprocess
    import sys

    code = ("import sys, sdvar_lib; heavy = [m for m in ('matplotlib', 'sdvar_lib.viz', 'sdvar_lib.eval', 'sdvar_lib.bench', "
            "'sdvar_lib.tiny', 'sdvar_lib.compat') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def _sdvar_lib_imports(source: str) -> list[str]:
    """The module of every ``from sdvar_lib... import`` / ``import sdvar_lib...`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdvar_lib":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "sdvar_lib"]
    return found


def _names_missing_from_faces(source: str) -> list[str]:
    """``face.name`` for every name imported from a face that the face's ``__all__`` does not list."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in FACES:
            listed = importlib.import_module(node.module).__all__
            missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in listed]
    return missing


def _beneath_a_face(module: str) -> bool:
    return module not in FACES


def _notebook_sources() -> dict[str, str]:
    import json

    out = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        out[nb.name] = "\n".join(line for cell in code for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
    return out


def test_notebooks_import_from_faces_only():
    sources = _notebook_sources()
    assert len(sources) >= 5
    for name, source in sources.items():
        deep = [m for m in _sdvar_lib_imports(source) if _beneath_a_face(m)]
        assert not deep, f"{name} imports from below a face: {deep}"
        assert not _names_missing_from_faces(source), f"{name}: {_names_missing_from_faces(source)}"
        for line in source.splitlines():
            code = line.split("#")[0]
            assert "._" not in code.replace("__", ""), f"{name} calls a private name: {line.strip()}"


def test_the_harness_imports_from_faces_only():
    for path in sorted((ROOT / "test_framework").glob("*.py")):
        deep = [m for m in _sdvar_lib_imports(path.read_text()) if _beneath_a_face(m)]
        assert not deep, f"test_framework/{path.name} imports from below a face: {deep}"
        assert not _names_missing_from_faces(path.read_text()), f"test_framework/{path.name}"


def test_the_face_rule_can_fail():
    assert _beneath_a_face("sdvar_lib.models.var") and _beneath_a_face("sdvar_lib.sdvar.decoder")
    assert not _beneath_a_face("sdvar_lib.viz") and not _beneath_a_face("sdvar_lib")
    assert _sdvar_lib_imports("from sdvar_lib.models.var import VAR\nimport sdvar_lib.viz.plotting") == [
        "sdvar_lib.models.var", "sdvar_lib.viz.plotting"]
    assert _names_missing_from_faces("from sdvar_lib import image_grid, SDVAR") == ["sdvar_lib.image_grid"]
