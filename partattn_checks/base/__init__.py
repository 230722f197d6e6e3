"""Foundations with no package imports: atomic writes, TOML reading."""
