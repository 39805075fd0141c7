"""Manifests: the per-shard Parquet record of every candidate, and the funnel derived from them."""

from .funnel import StageCount, format_funnel, funnel, status_counts
from .schema import manifest_schema, to_table

__all__ = ["StageCount", "format_funnel", "funnel", "manifest_schema", "status_counts", "to_table"]
