"""PinnerSage (KDD 2020) as a Dagster asset graph. ``definitions.py`` holds the one ``Definitions``;
``core/`` is the pure algorithm code, importable without Dagster (Spark executors, service workers)."""
