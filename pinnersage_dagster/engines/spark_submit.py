"""``spark-submit pinnersage_dagster/engines/spark_submit.py --inputs ... --output ...``: the per-user
pass as a Spark application, on inputs the pipeline exported (docs/performance.md, 'Spark'). spark-submit runs
this file as a script, so it imports the installed package by its absolute name."""

from pinnersage_dagster.engines.spark_job import main

if __name__ == "__main__":
    main()
