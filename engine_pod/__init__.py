"""rlfleet engine pod: an LLM serving engine with fleet-grade pause, abort, resume and weight update."""

__version__ = "0.1.0"
