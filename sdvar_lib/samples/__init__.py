"""samples: sample sets at scale — any registered decoder, one process or many, resumable, in VAR's evaluation format.

May import: ``sdvar_lib.fast`` and everything below it. ``sdvar_lib.eval`` sits above (its FID reads
the sets, :mod:`~sdvar_lib.samples.npz`), so nothing here measures quality.

Modules, lowest first: :mod:`~sdvar_lib.samples.npz` (``.npz`` archives larger than memory, written
and read in batches), :mod:`~sdvar_lib.samples.plan` (which image has which class and which batch
makes it), :mod:`~sdvar_lib.samples.shards` (the on-disk folder: manifest, one shard per batch,
resume), :mod:`~sdvar_lib.samples.distributed` (the few collectives for ``torchrun``),
:mod:`~sdvar_lib.samples.sampler` (making a set: :class:`SampleJob`, :func:`run_job`),
:mod:`~sdvar_lib.samples.cli` (``python -m sdvar_lib.sample``).
"""

from sdvar_lib.samples.npz import NpzArrayReader, NpzMember, npz_keys, write_npz_stream
from sdvar_lib.samples.plan import LABEL_ORDERS, SEED_STRIDE, VAR_PROTOCOL, SamplePlan
from sdvar_lib.samples.sampler import JobResult, SampleJob, images_to_uint8, run_job, write_pngs
from sdvar_lib.samples.shards import SampleFolder, SampleFolderError

__all__ = [
    # planning and making a set
    "SamplePlan", "SampleJob", "JobResult", "run_job", "VAR_PROTOCOL", "LABEL_ORDERS", "SEED_STRIDE",
    # the folder and its archives
    "SampleFolder", "SampleFolderError", "NpzArrayReader", "NpzMember", "write_npz_stream", "npz_keys",
    "images_to_uint8", "write_pngs",
]
