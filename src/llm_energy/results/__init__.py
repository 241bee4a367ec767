"""Results: the data contract (column registry, `schema`) and its Parquet I/O (`io`)."""

from llm_energy.results.io import (  # noqa: F401
    CELL_FILES,
    REQUEST_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    TIMESERIES_COLUMNS,
    table,
    write_cell,
)
