"""Engines of the per-user pass (``core.user_pass``) over one day's window.

Each reads the day's inputs once and writes the pass's rows (``core.user_pass.ROW_SCHEMA``)
as Parquet files into a run folder; ``warehouse.replace_interests`` loads that folder into
``user_clusters`` and ``user_medoids`` in one transaction.

- ``local``: worker processes on this machine, the day's embeddings in shared memory.
- ``spark``: a Spark cluster reads Parquet inputs the pipeline exports and writes Parquet
  results; nothing of the day passes through the driver.
"""
