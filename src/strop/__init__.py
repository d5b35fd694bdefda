"""strop: turn a general LLM into a specialist."""

__version__ = "0.1.0"
