"""LongRoPE's evolutionary search for rescale factors and the start token.

genes.py: the search space (genomes, bounds, mutation, crossover). evolution.py: the loop
of Algorithm 1, its state and checkpoint. fitness.py: perplexity as the objective.
distributed.py: scoring a generation across torchrun processes. plots.py: figures.
"""
