"""Evaluation: perplexity vs length and passkey retrieval."""
