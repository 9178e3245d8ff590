"""Targets and backends: where a compiled module runs."""
