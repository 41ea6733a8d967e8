"""LongRoPE's search for rescale factors and the start token.

genes.py: the search space (genomes, bounds, mutation, crossover). evolution.py: the loop
of Algorithm 1, its state and checkpoint. cma.py: CMA-ES on the same genome and state.
needle.py: LongRoPE2's needle documents. fitness.py: the objectives by name (perplexity,
needle) and what a candidate means. driver.py: the optimizers by name, one search with its
files, for `longrope search` and the recipe. distributed.py: scoring a generation across
torchrun processes. plots.py: figures.
"""
