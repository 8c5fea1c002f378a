"""qeforge: turn a QE agent fleet's trajectories into per-category local adapters.

Dagster-free core: schema and import, curation functions, training entry point.
Dagster wiring lives in `pipelines/` and `assets/`.
"""
