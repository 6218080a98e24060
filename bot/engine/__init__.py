"""The orchestrator engine: providers, planning, execution, validation, the durable queue."""
