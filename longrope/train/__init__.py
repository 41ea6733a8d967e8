"""Training at the extended length and the progressive extension recipe.

finetune.py: long-context fine-tuning with `accelerate` (packing, schedule, checkpoint and
exact resume, LongRoPE2 mixed context window). stages.py: the searches of a recipe (the
second search on top of the first stage's factors, short-context readjustment) as thin
wrappers around `longrope.search`. extend.py: the whole recipe, stage by stage.
"""
