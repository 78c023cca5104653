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
