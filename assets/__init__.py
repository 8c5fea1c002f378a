"""Dagster assets of qeforge, one module per stage; each calls plain functions in `qeforge`."""
