"""Soft compression: context as fewer vectors in the model's input-embedding space (CompLLM)."""
