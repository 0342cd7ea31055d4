"""Validation of sparsetpc against larnd-sim: readers of the three hit formats, matching and comparison,
plots, and the reference-case runner.  Command line: ``python -m validation {compare,run-reference,to-packets}``.
"""
from .compare import Tolerances, compare_tables, format_summary, match_hits
from .readers import HitTable, detect_format, read_hits, write_sparsetpc_hits

__all__ = ["HitTable", "Tolerances", "compare_tables", "detect_format", "format_summary", "match_hits",
           "read_hits", "write_sparsetpc_hits"]
