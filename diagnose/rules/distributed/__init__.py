"""Distributed rules: compare ranks (modules here set SCOPE = "run" and get the whole Run)."""
