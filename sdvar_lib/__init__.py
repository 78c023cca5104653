"""SDVAR workbench: speculative decoding for Visual AutoRegressive models.

The public face: what a script or notebook needs to load a pair, decode and read the statistics::

    from sdvar_lib import SamplingConfig, get_method, load_pair, make_pair_sdvar

    pair = load_pair("bundled")                      # or "official"
    sd = make_pair_sdvar(pair)                        # an SDVAR: fast path on a GPU, eager float32 on a CPU
    out = get_method("exact_g2").run(sd, 4, [1, 2, 3, 4], 0, SamplingConfig(cfg=1.5))
    print(out.stats.summary())

Everything else is in the sub-packages, each with its own face (``from sdvar_lib.viz import
image_grid``, ``from sdvar_lib.sdvar import AdaptiveGamma``); they are layers, a module importing only
its own layer and the ones below it (see ``docs/ARCHITECTURE.md``):

``util`` < ``models``, ``data`` < ``sdvar`` < ``fast`` < ``samples`` < ``eval`` < ``viz`` < ``bench``, ``tiny``, ``demo``

The research fork's names are in :mod:`sdvar_lib.compat`; the commands (``python -m sdvar_lib``,
``sdvar_lib.evaluate``, ``sdvar_lib.train_tiny``, ``sdvar_lib.bench``, ``sdvar_lib.sample``,
``sdvar_lib.fid``, ...) sit on top. Importing this face imports neither matplotlib nor the
evaluation.
"""

from sdvar_lib.fast.setup import describe_setup, make_pair_sdvar
from sdvar_lib.models.checkpoints import load_pair, pick_device
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import METHODS, Method, get_method
from sdvar_lib.sdvar.stats import SDVAROutput, SDVARStats

__all__ = [
    # models
    "load_pair", "ModelPair", "pick_device",
    # the decoder and how it runs
    "SDVAR", "make_pair_sdvar", "describe_setup", "SamplingConfig",
    # every decoder by name
    "get_method", "METHODS", "Method",
    # what a call returns
    "SDVAROutput", "SDVARStats",
]
__version__ = "0.2.0"
