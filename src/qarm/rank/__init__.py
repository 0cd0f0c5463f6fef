"""qarm.rank: the downstream ranker that learns an embedding per semantic code end to end.

- ``qarm.rank.stage:run_train(cfg, run)``: the ablation (id, frozen_mm, ia_rep, vq, rq, qarm, qarm_dense, qarm_raw) x seeds.
- ``qarm.rank.predict.load_ranker(run_dir, variant=None) -> Ranker``;
  ``Ranker.score(history, candidates, user_id, extra_items)``, ``Ranker.needs_dense``.
- ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m qarm.rank CONFIG --out RUN``: DDP (gloo).
"""
