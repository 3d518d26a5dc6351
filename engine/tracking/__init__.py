"""Mirroring the run store's metrics to experiment trackers (Weights & Biases, TensorBoard, MLflow).

Off by default (``tracking.backends: []``). The SQLite store stays the source of truth: the trainer
(embedded) or the launcher (verl) writes a step to the store, then :class:`~.mirror.TrackerMirror`
reads the metric rows that are new since its cursor and sends them on; nothing ever flows back. Each
backend's cursor and its own run id (W&B run id, MLflow run id) are kept in the store
(``tracker_state``), so a resumed run continues the same tracker run and a run whose tracking is
switched on later sends its history first.
"""
