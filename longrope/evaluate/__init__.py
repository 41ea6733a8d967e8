"""Evaluation: perplexity vs length (ppl.py), passkey retrieval (passkey.py), the RULER-style
task suite (tasks.py), and the runner that fills a grid of variants x lengths x kinds of
figure for every command (runner.py)."""
