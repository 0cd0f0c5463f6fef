"""qarm.retrieve: generative retrieval on the run's semantic IDs, beside the ranker.

- ``qarm.retrieve.sequences``: leave-one-out user sequences (last item test, second last valid).
- ``qarm.retrieve.tokens``: RQ tuples + a dedup level -> per-level token ids.
- ``qarm.retrieve.trie``: prefix trie of the catalogue's code tuples and constrained beam search.
- ``qarm.retrieve.model``: ``GenerativeRetriever``, a decoder-only transformer over code tokens.
- ``qarm.retrieve.sasrec``: ``SASRecRetriever``, the ID-based sequential baseline.
- ``qarm.retrieve.popularity``: ``PopularityRetriever``.
- ``qarm.retrieve.evaluate``: Recall@K / NDCG@K over full-catalogue rankings, cold and per-bucket figures.
- ``qarm.retrieve.stage.run_retrieve``: the pipeline stage.

(Nothing is imported here: ``qarm.config`` imports ``qarm.retrieve.config``, and torch should load only when used.)
"""
