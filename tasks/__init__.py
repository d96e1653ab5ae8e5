"""Prefect tasks: one per pipeline stage, reading and writing Parquet artifacts."""
