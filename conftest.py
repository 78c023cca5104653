"""Root conftest: loaded for every path under the repository (tests/ and notebooks/ alike), before any test module.

``tests.skip_policy`` makes the session fail when a test skips for a reason other than the allowed ones
(GPU tests without CUDA, ``no_cuda`` tests with CUDA, absent reference fixtures).

Without CUDA, Triton's kernels are checked on the CPU in its interpreter, which must be switched on before
Triton is first imported; any test module may import it (the fast path's kernels do), so it is switched on
here, once, before collection, rather than in the modules that need it.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["tests.skip_policy"]
