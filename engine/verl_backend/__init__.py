"""ROPD on an unmodified verl release (0.9.1).

Pieces (each importable on its own; nothing here imports verl or Ray at package import time):

- :mod:`.reward_manager` - ``ROPDRewardManager``, a verl reward-loop manager (``run_single`` per sample)
  that hands every training rollout to the run's group gatherer and returns its rubric reward;
- :mod:`.gatherer` - ``GroupGatherer``, a named async Ray actor pinned to the launch node that collects
  the n rollouts of each prompt (by ``uid``), scores the group with the engine Scorer (one rubricator
  call per prompt), resolves every waiting rollout, and appends each GroupResult to a side-channel file;
- :mod:`.side_channel` - that JSONL file (GroupResult <-> JSON);
- :mod:`.metrics_ingest` - tailing verl's ``file`` logger and mapping its keys into the run store;
- :mod:`.data` - writing the run's task as verl parquet files (with the validation split marker);
- :mod:`.launcher` - ``run(cfg, store, run, resume)``: starts ``python -m verl.trainer.main_ppo`` and
  writes metrics and groups into the store on the launch node;
- :mod:`.plugin` - the ``verl.plugins`` entry point (registers the manager as ``ropd``).
"""

REWARD_MANAGER_NAME = "ropd"
GATHERER_NAMESPACE = "ropd"
