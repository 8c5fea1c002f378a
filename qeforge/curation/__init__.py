"""Curation steps as pure functions over pandas frames and numpy vectors."""
