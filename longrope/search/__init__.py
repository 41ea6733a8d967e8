"""LongRoPE's evolutionary search for rescale factors and the start token.

genes.py: the search space (genomes, bounds, mutation, crossover). evolution.py: the loop
of Algorithm 1, its state and checkpoint. fitness.py: the objectives (perplexity) and what a
candidate means. driver.py: one search with its files, for `longrope search` and the recipe.
distributed.py: scoring a generation across torchrun processes. plots.py: figures.
"""
