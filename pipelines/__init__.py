"""Dagster wiring for qeforge: definitions, resources, partitions, jobs."""
