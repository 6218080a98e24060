"""Self-hosted AI orchestrator: local models plan, execute and cross-validate each other."""

__version__ = "0.1.0"
