"""``docs/ARCHITECTURE.md`` is true to the code: every path, name, command and link it mentions exists.

The page is parsed, not listed: every inline code span and every fenced Python block. What counts
as a reference (anything else in a code span is a value, a shape or an expression):

- a path (``models/var.py``, ``bench/``, ``docs/MIGRATING.md``): relative to the repository, to
  ``sdvar_lib/`` or, for a bare file name, some file of that name in ``sdvar_lib/`` (paths leaving
  the repository, ``../``, cannot be checked here);
- a dotted name (``VAR.generate``, ``sdvar.registry.DECODERS``, ``state.f_hats[s]``): resolved
  attribute by attribute from ``sdvar_lib``, a sub-package, a class of the package, or one of the
  page's variables (``sd``, ``state``, ``proposal``, ...);
- a class or constant name (``DecoderKind``, ``OFFICIAL_DEPTHS``) and a snake_case name whose
  words all have two or more letters (``make_pair_sdvar``, ``token_level``; not shapes such as
  ``x_2BlC``): defined somewhere in the package or the harness (a module, class, function,
  parameter, attribute, field or constant), a builtin or typing name, or a registered
  method/policy name;
- ``python -m module``: an importable module; ``from sdvar_lib import a, b``: names of the top face;
- a Markdown link: an existing file or a heading of the page.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import re
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = ROOT / "sdvar_lib"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"{IDENT}(?:\.{IDENT})+")
SUBPACKAGES = ("util", "models", "data", "sdvar", "fast", "samples", "eval", "viz", "bench", "tiny", "demo")
VARIABLES = {  # the page's variable names and what they stand for
    "sd": "sdvar_lib.sdvar.decoder.SDVAR",
    "state": "sdvar_lib.sdvar.state.SDVARInferenceState",
    "proposal": "sdvar_lib.sdvar.state.DraftProposal",
    "verify": "sdvar_lib.sdvar.state.VerifyResult",
    "acceptance": "sdvar_lib.sdvar.state.AcceptanceResult",
    "query": "sdvar_lib.sdvar.state.CombinedQuery",
    "pair": "sdvar_lib.models.presets.ModelPair",
}


# ---- what the page mentions -----------------------------------------------------------------------
def _code_spans(text: str) -> tuple[list[str], list[str]]:
    """Inline code spans and fenced Python blocks of a Markdown text."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [s.strip() for s in re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))]
    return spans, blocks


def _is_path(span: str) -> bool:
    return bool(re.fullmatch(r"[\w./-]+\.(py|md|json|ipynb)|[\w./-]+/", span))


def _dotted_names(code: str) -> list[str]:
    """Dotted names in a piece of code, each cut before its first call or subscript."""
    return [m.group(0) for m in DOTTED.finditer(code) if not code[: m.start()].endswith((".", "-m "))]


def _words(span: str) -> list[str]:
    """Class/constant names and long snake_case names of a span, outside dotted names."""
    rest = DOTTED.sub(" ", span)
    out = []
    for word in re.findall(IDENT, rest):
        if re.fullmatch(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*|[A-Z][A-Z0-9_]{2,}", word):
            out.append(word)
        elif "_" in word.strip("_") and all(len(part) >= 2 for part in word.strip("_").split("_")):
            out.append(word)
    return out


# ---- what exists ----------------------------------------------------------------------------------
def _defined_names() -> set[str]:
    """Every name the package and the harness define, and the registry's method and policy names."""
    names: set[str] = set(dir(builtins)) | set(typing.__all__) | {"sdvar_lib", "test_framework"}
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "test_framework").glob("*.py")):
        names.add(path.stem)  # module names
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.arg):  # parameters: a signature on the page names them
                names.add(node.arg)
    from sdvar_lib.models import MODEL_CHOICES
    from sdvar_lib.sdvar import DECODERS, METHODS, POLICY_NAMES

    return names | set(METHODS) | set(DECODERS) | set(POLICY_NAMES) | set(MODEL_CHOICES)


def _has(obj, attr: str) -> bool:
    if hasattr(obj, attr):
        return True
    fields = getattr(obj, "__dataclass_fields__", {})
    return attr in fields or attr in getattr(obj, "__annotations__", {})


def _resolve(dotted: str):
    """The object ``dotted`` names, or raise ``LookupError`` saying which part is missing."""
    parts = dotted.split(".")
    head = parts[0]
    if head in VARIABLES:
        parts = VARIABLES[head].split(".") + parts[1:]
    elif head in SUBPACKAGES:
        parts = ["sdvar_lib"] + parts
    elif head != "sdvar_lib":
        found = [m for m in _package_modules() if hasattr(m, head) and isinstance(getattr(m, head), type)]
        if not found:
            raise LookupError(f"{dotted}: {head!r} is neither sdvar_lib, a sub-package, a class of the package "
                              f"nor one of the page's variables {sorted(VARIABLES)}")
        obj, rest = getattr(found[0], head), parts[1:]
        return _walk(obj, rest, dotted)
    obj, i = None, 0
    for i in range(len(parts), 0, -1):  # the longest importable module prefix
        name = ".".join(parts[:i])
        if _find_spec(name) is not None:
            obj = importlib.import_module(name)
            break
    if obj is None:
        raise LookupError(f"{dotted}: no module {parts[0]!r}")
    return _walk(obj, parts[i:], dotted)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ModuleNotFoundError, ValueError):  # a parent is missing or is not a package
        return None


def _walk(obj, rest: list[str], dotted: str):
    for attr in rest:
        if not _has(obj, attr):
            raise LookupError(f"{dotted}: {getattr(obj, '__name__', obj)!r} has no {attr!r}")
        obj = getattr(obj, attr, None)
        if obj is None:  # a dataclass field without a default: exists, nothing further to resolve
            return None
    return obj


_MODULES: list = []


def _package_modules() -> list:
    if not _MODULES:
        for path in sorted(PACKAGE.rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            if rel[-1] == "__main__" or "kernels" in rel[:-1] and rel[-1] != "__init__":
                continue  # the commands' entry point; the Triton kernels need Triton
            name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
            _MODULES.append(importlib.import_module(name))
    return _MODULES


def _path_exists(span: str) -> bool:
    if span.startswith("../"):
        return True  # outside the repository: cannot be checked from a checkout
    candidates = [ROOT / span, PACKAGE / span]
    if "/" not in span.rstrip("/"):
        candidates += list(PACKAGE.rglob(span.rstrip("/")))
    return any(Path(c).exists() for c in candidates)


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# ---- the checks -----------------------------------------------------------------------------------
def problems_of(text: str) -> list[str]:
    spans, blocks = _code_spans(text)
    defined = _defined_names()
    problems = []
    for span in spans:
        if _is_path(span):
            if not _path_exists(span):
                problems.append(f"path {span!r} does not exist")
            continue
        if span.startswith("python -m "):
            module = span.split()[2]
            if _find_spec(module) is None:
                problems.append(f"command {span!r}: no module {module}")
            continue
        if span.startswith("from sdvar_lib import "):
            import sdvar_lib

            names = [n.strip() for n in span.removeprefix("from sdvar_lib import ").split(",") if n.strip() != "..."]
            problems += [f"{span!r}: the top face has no {n!r}" for n in names if n not in sdvar_lib.__all__]
            continue
        for dotted in _dotted_names(span):
            try:
                _resolve(dotted)
            except LookupError as exc:
                problems.append(str(exc))
        problems += [f"name {w!r} (in `{span}`) is defined nowhere" for w in _words(span) if w not in defined]
    for block in blocks:
        ast.parse(block)
        for dotted in _dotted_names(block):
            try:
                _resolve(dotted)
            except LookupError as exc:
                problems.append(f"code block: {exc}")
    headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("#"):
            if target[1:] not in headings:
                problems.append(f"link {target!r}: no such heading")
        elif not target.startswith("http") and not (PAGE.parent / target).exists():
            problems.append(f"link {target!r}: no such file")
    return problems


def test_every_path_and_name_of_the_architecture_page_exists():
    problems = problems_of(PAGE.read_text())
    assert not problems, "\n".join(problems)


def test_the_page_is_read():
    """The parse sees the page's references (a check that found nothing would pass on anything)."""
    spans, blocks = _code_spans(PAGE.read_text())
    assert len(spans) > 150 and len(blocks) == 1
    dotted = {d for s in spans for d in _dotted_names(s)}
    assert {"VAR.generate", "SDVAR.run_round", "sdvar.registry.DECODERS", "MultiScaleQuantizer.f_hat_after"} <= dotted
    assert {"models/run.py", "sdvar/handoff.py", "tests/test_layering.py"} <= {s for s in spans if _is_path(s)}


@pytest.mark.parametrize(("stale", "why"), [
    ("`sdvar/run.py`", "path 'sdvar/run.py' does not exist"),
    ("`sdvar_lib.decoding.reference`", "no 'decoding'"),
    ("`SDVAR.generate_test3`", "has no 'generate_test3'"),
    ("`state.last_output`", "has no 'last_output'"),
    ("`Method.describe_kind`", "has no 'describe_kind'"),
    ("`FastRunFactory`", ""),  # exists: no problem
    ("`RunHandle`", "'RunHandle' (in `RunHandle`) is defined nowhere"),
    ("`make_sdvar_pair`", "defined nowhere"),
    ("`python -m sdvar_lib.evaluation_cli`", "no module sdvar_lib.evaluation_cli"),
    ("`from sdvar_lib import SDVAR, image_grid`", "the top face has no 'image_grid'"),
    ("[x](#6-nothing)", "no such heading"),
    ("```python\nsd.generate_baseline(state)\n```", "has no 'generate_baseline'"),
])
def test_a_stale_reference_is_reported(stale, why):
    problems = problems_of(f"# Page\n\nSee {stale} here.\n")
    if why:
        assert any(why in p for p in problems), problems
    else:
        assert problems == []
