"""Dagster-free training stack: tiny base model, recipes, SFT (LoRA per category), tracking.

Heavy libraries (torch, transformers, trl, mlflow) are imported inside functions so that
importing this package (e.g. from Dagster definitions) stays cheap.
"""
