"""qarm.quant: the ``quantize`` stage, discrete codes a ranker can learn embeddings for.

- ``qarm.quant.rq.RQKMeans``: residual k-means semantic IDs (fit / transform / inverse_transform / save / load),
  with capacity-capped last-level assignment (``balanced``) against collisions.
- ``qarm.quant.vq.VQCoder``: top-K nearest pool items as a code (flat, HNSW or IVF search).
- ``qarm.quant.metrics``: collision rate, unique-SID ratio, per-level utilisation/perplexity/error.
- ``qarm.quant.stage.run_quantize``: the pipeline stage; ``qarm.quant.assign``: codes for new items.

(Nothing is imported here: ``qarm.config`` imports this package, and faiss should load only when used.)
"""
