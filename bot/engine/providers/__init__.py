"""LLM servers behind one port: LM Studio, Ollama, OpenAI-compatible and the embedded llama.cpp."""
