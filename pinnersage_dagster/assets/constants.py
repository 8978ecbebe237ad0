"""Names shared by the asset modules."""

GROUP = "pinnersage"
# every step that writes the warehouse takes a slot of this pool; dagster.yaml limits it to 1
DUCKDB_POOL = "duckdb"
