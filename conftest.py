"""Root conftest: loaded for every path under the repository (tests/ and notebooks/ alike).

``tests.skip_policy`` makes the session fail when a test skips for a reason other than the allowed ones
(GPU tests without CUDA, ``no_cuda`` tests with CUDA, absent reference fixtures).
"""

pytest_plugins = ["tests.skip_policy"]
