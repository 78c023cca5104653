"""Every notebook at the official size on a GPU, as Colab runs it: ``MODELS = "official"``, half precision, 15 GB.

The ``gpu`` tests (skipped without CUDA) write random-weight official-size checkpoints (VQVAE, VAR d16 and d30,
float32 state dicts under the released file names) into a temporary folder that ``SDVAR_CKPT_DIR`` points at, then
execute each notebook in a Jupyter kernel (``nbclient``) exactly as stored except for its two set-up parameters:
``MODELS = "official"`` and ``DTYPE = "float16"`` (what a T4 gets) or ``"bfloat16"``. An IPython start-up file
caps the kernel's CUDA allocator at :data:`CAP_GIB` (``torch.cuda.set_per_process_memory_fraction``), what a
15 GB T4 leaves after its CUDA context, so a notebook that needs more fails with an out-of-memory error. A
notebook passes when every cell runs, its own assertions included, on the official models (not the bundled
fallback). One cell appended to the executed copy reports the peak allocated and reserved memory. The main job
runs with ``--models official`` under the same cap.

With ``SDVAR_GPU_REPORT=FILE.json`` the measured rows (time, peak memory) are written there (atomically): the
table in ``docs/NOTEBOOKS.md`` comes from such a run. The CPU test at the end checks that every notebook still
has the two parameter lines this test sets, so that the GPU test cannot silently run the bundled pair.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
CAP_GIB = 14.5
"""What a Colab T4 (15,360 MiB) leaves to PyTorch's allocator after its CUDA context."""
MODELS_LINE, DTYPE_LINE = 'MODELS = "bundled"', "DTYPE = None"
CELL_TIMEOUT_S = 600

CAP_CODE = f"""\
import torch
_MEMORY_CAP_GIB = {CAP_GIB}
if torch.cuda.is_available():
    torch.cuda.set_per_process_memory_fraction({CAP_GIB} * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.reset_peak_memory_stats()
"""
PEAK_CELL = """\
import json as _json, torch as _torch
print("PEAK " + _json.dumps({"allocated_gib": _torch.cuda.max_memory_allocated() / 2**30,
                             "reserved_gib": _torch.cuda.max_memory_reserved() / 2**30,
                             "cap_gib": globals().get("_MEMORY_CAP_GIB"), "models": pair.description,
                             "setup": describe_setup(sd)}))
"""


def set_parameters(source: str, dtype: str) -> str:
    """The set-up cell with ``MODELS = "official"`` and ``DTYPE = "<dtype>"`` (each line must be there once)."""
    for line in (MODELS_LINE, DTYPE_LINE):
        if source.count(line) != 1:
            raise ValueError(f"the set-up cell must assign {line!r} exactly once")
    return source.replace(MODELS_LINE, 'MODELS = "official"').replace(DTYPE_LINE, f'DTYPE = "{dtype}"')


def _record(row: dict) -> None:
    path = os.environ.get("SDVAR_GPU_REPORT")
    if not path:
        return
    from sdvar_lib.util.atomic import atomic_write_text

    report = Path(path)
    rows = json.loads(report.read_text())["rows"] if report.is_file() else []
    rows = [r for r in rows if (r["what"], r["dtype"]) != (row["what"], row["dtype"])] + [row]
    atomic_write_text(report, json.dumps({"cap_gib": CAP_GIB, "gpu": torch.cuda.get_device_name(0),
                                          "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


@pytest.fixture(scope="module")
def official_checkpoints(tmp_path_factory) -> Path:
    """Random-weight official-size checkpoints under the released file names (float32, as released)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from sdvar_lib.models.checkpoints import VAE_FILENAME, var_filename
    from sdvar_lib.models.presets import build_official_pair

    folder = tmp_path_factory.mktemp("official_checkpoints")
    torch.manual_seed(0)
    pair = build_official_pair(16, 30, device="cuda")
    for name, module in ((VAE_FILENAME, pair.vae), (var_filename(16), pair.draft), (var_filename(30), pair.target)):
        torch.save({k: v.cpu() for k, v in module.state_dict().items()}, folder / name)
    del pair
    torch.cuda.empty_cache()
    return folder


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, official_checkpoints):
    """Environment of the notebook kernels: the checkpoint folder and the allocator cap at start-up."""
    ipython_dir = tmp_path_factory.mktemp("ipython")
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-memory-cap.py").write_text(CAP_CODE)
    return {"SDVAR_CKPT_DIR": str(official_checkpoints), "IPYTHONDIR": str(ipython_dir), "MPLBACKEND": "Agg"}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_the_official_size_within_15_gb(notebook, dtype, kernel_env, monkeypatch):
    import nbclient
    import nbformat

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].source = set_parameters(nb.cells[1].source, dtype)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    t0 = time.perf_counter()
    try:
        nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(notebook.parent)}}).execute()
        status = "ok"
    except nbclient.exceptions.CellExecutionError as exc:
        status = f"failed: {str(exc).strip().splitlines()[-1][:300]}"
    seconds = time.perf_counter() - t0
    outputs = ["".join(o.get("text", "")) for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    peak = next((json.loads(t.split("PEAK ", 1)[1]) for t in outputs if "PEAK " in t), {})
    row = dict(what=notebook.stem, dtype=dtype, status=status, seconds=round(seconds, 1), **peak)
    _record(row)
    print(json.dumps(row))
    assert status == "ok", status
    assert "official d16 -> d30" in peak["models"] and "FALLBACK" not in peak["models"], peak["models"]
    assert f"VAR weights {dtype}, fast path on" in peak["setup"], peak["setup"]
    assert peak["cap_gib"] == CAP_GIB, "the kernel did not run the allocator cap at start-up"
    assert peak["reserved_gib"] <= CAP_GIB


@pytest.mark.gpu
def test_main_job_runs_at_the_official_size_within_15_gb(kernel_env, tmp_path):
    # ``python -m sdvar_lib`` exits with main()'s code, so the job's main is called here and the peak printed after it
    code = CAP_CODE + "import sys\nfrom sdvar_lib.demo.cli import main\nstatus = main(sys.argv[1:])\n" + (
        "print('PEAK', torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30)\n"
        "sys.exit(status)\n")
    out = tmp_path / "main_job"
    env = dict(os.environ, **kernel_env)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, "--models", "official", "--out", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    print(run.stdout[-4000:], run.stderr[-4000:])
    assert run.returncode == 0, run.stderr[-2000:]
    peak_line = next(line for line in run.stdout.splitlines() if line.startswith("PEAK "))
    allocated, reserved = (float(v) for v in peak_line.split()[1:3])
    _record(dict(what="main job --models official", dtype="auto", status="ok", seconds=round(seconds, 1),
                 allocated_gib=allocated, reserved_gib=reserved))
    assert "official d16 -> d30" in run.stdout and "FALLBACK" not in run.stdout
    assert {"comparison.png", "stats.md", "stats.json"} <= {p.name for p in out.iterdir()}
    assert reserved <= CAP_GIB


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_the_parameters_the_gpu_test_sets(notebook):
    """On the CPU: the set-up cell assigns ``MODELS = "bundled"`` and ``DTYPE = None`` once each (the GPU test
    rewrites exactly those lines; a notebook without them would make it raise, not run the bundled pair)."""
    cell = json.loads(notebook.read_text())["cells"][1]
    source = "".join(cell["source"])
    rewritten = set_parameters(source, "float16")
    assert 'MODELS = "official"' in rewritten and 'DTYPE = "float16"' in rewritten
    assert "make_pair_sdvar(pair, FAST, DTYPE)" in source
    with pytest.raises(ValueError, match="exactly once"):
        set_parameters(source.replace(DTYPE_LINE, "DTYPE = 'float16'"), "float16")
