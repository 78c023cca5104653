"""eval: measuring quality — metrics (classifier, Fréchet distance, confidence intervals, image comparison),
the quality-against-passes evaluation of every registered decoder, the lossless criterion, and FID/IS/
precision-recall of sample sets (:mod:`~sdvar_lib.eval.fid`, which reads the sets of :mod:`sdvar_lib.samples`).

May import: ``sdvar_lib.samples`` and everything below it (``fast``, ``sdvar``, ``models``, ``data``, ``util``).
"""
