"""The progressive extension recipe of `longrope extend` (LongRoPE section 3.3).

config.py: the recipe YAML as typed dataclasses, checked before anything runs. stages.py:
search -> fine-tune -> search again -> readjust -> final model, each stage resumable.
report.py: perplexity and passkey of every stage and baseline (the evaluation runner).
Training and search code never import this package.
"""
