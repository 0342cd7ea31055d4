"""Command-line interface: ``sparsetpc simulate`` and ``sparsetpc example``."""
from .main import main

__all__ = ["main"]
