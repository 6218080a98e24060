"""Integrations with external services that are not LLM providers (billing APIs, …)."""
