"""What the ``pinnersage`` command does, one module per kind of work; ``cli.py`` only parses the
command line and calls these.

- ``pipeline``: run the graph (the demo: a history load, then the daily job for some days)
- ``summary``: what a materialized partition holds
- ``tuning``: the offline evaluation and alpha calibration
- ``users``: a user's recommendations and interests from the newest snapshot
"""
