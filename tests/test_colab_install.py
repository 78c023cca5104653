"""The Colab path of the notebooks: install the workbench from git, then run notebook 00 from the installed package.

What the first cell of every notebook does on Colab, replayed offline:

- a stub ``google.colab`` module, imported at start-up (``sitecustomize``) as Colab's kernel does,
  makes the cell take its Colab branch;
- ``SDVAR_REPO_URL`` points the cell's ``pip install "sdvar-workbench[hub] @ git+{REPO_URL}"`` at a
  ``git+file://`` repository holding this checkout's HEAD (so: commit before running this test);
- pip's own environment variables make that install what Colab's is, without a network: into a
  fresh folder (``PIP_TARGET``), without dependencies (``PIP_NO_DEPS``; Colab has torch and the rest,
  and the ``[hub]`` extra is then not resolved), building with this environment's setuptools
  (``PIP_NO_BUILD_ISOLATION=0`` turns isolation off) and no index (``PIP_NO_INDEX``);
- notebook 00 runs from a folder outside the checkout, with only the stub and the install folder on
  ``PYTHONPATH``, so the library, the harness and the bundled models can only come from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_setup.ipynb"
PROVENANCE = """\
import sdvar_lib, test_framework
from sdvar_lib.eval import load_bundled_report
from sdvar_lib.models.checkpoints import BUNDLED_DIR

print("PROVENANCE", json.dumps({"sdvar_lib": sdvar_lib.__file__, "test_framework": test_framework.__file__,
      "assets": str(BUNDLED_DIR), "stored_rows": len(load_bundled_report().results)}))
"""


def _needs(ok: bool, why: str) -> None:
    """Everything this test needs comes with the README's set-up: a missing piece fails it (never a skip)."""
    if not ok:
        pytest.fail(why, pytrace=False)


def _snapshot_of_head(dest: Path) -> Path:
    """A one-commit repository of HEAD's tree (not a clone: pip's partial clone of a shallow clone never ends)."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    git = ["git", "-C", str(dest), "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "HEAD of the checkout under test"], check=True)
    return dest


def _stream_text(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_the_colab_cell_installs_from_git_and_notebook_00_runs_from_the_install(tmp_path):
    _needs(shutil.which("git") is not None, "git is not installed")
    _needs((ROOT / ".git").exists(), "not a git checkout: nothing to install from")
    _needs(importlib.util.find_spec("setuptools") is not None,
           "setuptools is not installed in this environment (the offline build runs without build isolation)")
    _needs(importlib.util.find_spec("nbconvert") is not None, "nbconvert is not installed (pip install -r requirements.txt)")

    clone = _snapshot_of_head(tmp_path / "clone")
    stub = tmp_path / "stub" / "google" / "colab"  # a namespace package `google` with a `colab` module
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stand-in for Colab\'s module: the notebooks take their Colab branch."""\n')
    # Colab's kernel has imported google.colab before the first cell runs; site imports this at start-up
    (tmp_path / "stub" / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")
    site = tmp_path / "site"
    site.mkdir()
    work = tmp_path / "work"  # outside the checkout: the set-up cell cannot find a repository root from here
    work.mkdir()

    nb = json.loads((clone / "notebooks" / NOTEBOOK).read_text())
    setup = "".join(nb["cells"][1]["source"])
    assert '"sdvar-workbench[hub] @ git+{REPO_URL}"' in setup  # on Colab the [hub] extra brings huggingface_hub
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "provenance", "metadata": {},
                        "outputs": [], "source": "import json\n" + PROVENANCE})
    (work / NOTEBOOK).write_text(json.dumps(nb))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "SDVAR_", "JUPYTER"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path / "stub"), str(site)]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # the kernel: this environment
        SDVAR_REPO_URL=f"file://localhost{clone}",  # pip's URL parser wants a host in git+file URLs
        SDVAR_THREADS="1",
        PIP_TARGET=str(site), PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
    )
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", "executed.ipynb",
         "--ExecutePreprocessor.timeout=300", "--ExecutePreprocessor.kernel_name=python3", NOTEBOOK],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    assert list(site.glob("sdvar_workbench-*.dist-info")), "the cell did not install the package into the target"
    assert (site / "sdvar_lib" / "assets" / "tiny_digits" / "evaluation.json").is_file()
    done = json.loads((work / "executed.ipynb").read_text())
    first = _stream_text(done["cells"][1]).splitlines()
    assert "tiny digits pair" in first[0] and first[1].startswith("device cpu, VAR weights float32, fast path off")
    line = next(x for x in _stream_text(done["cells"][-1]).splitlines() if x.startswith("PROVENANCE"))
    where = json.loads(line.removeprefix("PROVENANCE "))
    for key in ("sdvar_lib", "test_framework", "assets"):
        assert Path(where[key]).resolve().is_relative_to(site.resolve()), (key, where[key])
    assert where["stored_rows"] > 0
