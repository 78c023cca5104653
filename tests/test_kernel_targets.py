"""The fused stage attention kernel compiles for the GPUs the workbench runs on, checked without a GPU.

The CPU tests run the Triton kernels in Triton's interpreter, which accepts programs that the compiler refuses (a
``tl.dot`` tile under 16, a shared-memory budget a T4 does not have). Here the kernel goes through Triton's real
compiler down to a cubin (``triton.compile`` with an explicit ``GPUTarget``: no GPU needed, Triton's bundled
``ptxas``) for Colab's T4 (sm75, fp16) and the H200 (sm90, bf16), at every query block the official stages use, in a
subprocess without the interpreter (this session may have switched it on for other modules).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sdvar_lib.fast.kernels import attention
from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS

kernel = attention._stage_attention_kernel
names = list(inspect.signature(kernel.fn).parameters)
out = {}
for cap, dt in ((75, "fp16"), (90, "bf16")):
    types = {"QKV": "*" + dt, "KC": "*" + dt, "VC": "*" + dt, "O": "*" + dt, "F": "*fp32", "scale_log2": "fp32",
             "eps": "fp32", **{n: "i32" for n in ("l", "pos", "H", "stride_b", "stride_h", "stride_t")}}
    for block_m in sorted({attention.query_block(pn * pn) for pn in OFFICIAL_PATCH_NUMS[1:]}):
        consts = {"NORM": True, "PRECISION": "tf32", "UPCAST": False, "BLOCK_M": block_m, "BLOCK_N": 64, "D": 64}
        signature = {n: types.get(n, "constexpr") for n in names}
        missing = [n for n in names if n not in types and n not in consts]
        if missing:
            sys.exit(f"parameters without a type here: {missing}")
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts),
                                  target=GPUTarget("cuda", cap, 32),
                                  options={"num_warps": 4, "num_stages": attention.NUM_STAGES})
        out[f"sm{cap} {dt} block {block_m}"] = compiled.metadata.shared
print(json.dumps(out))
"""


def test_stage_attention_compiles_for_the_t4_and_the_h200(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), TRITON_CACHE_DIR=str(tmp_path / "triton"))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shared = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(shared) == {f"sm{cap} {dt} block {m}" for cap, dt in ((75, "fp16"), (90, "bf16")) for m in (16, 32, 64)}
    # a T4 gives a block 48 KB of shared memory without opting in to more
    assert all(v <= 48 * 1024 for k, v in shared.items() if k.startswith("sm75")), shared
