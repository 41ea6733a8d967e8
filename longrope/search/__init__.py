"""LongRoPE's search for rescale factors and the start token.

genes.py: the search space (genomes, bounds, mutation, crossover). loop.py: the one loop of
Algorithm 1 (seed, score, select, ask, score, tell, checkpoint) and the optimizers by name.
evolution.py: the paper's GA and cma.py: CMA-ES, the loop's two optimizers, on the same genome
and state. state.py: settings, history and the state a resume continues from. scoring.py:
scoring a candidate document by document, early rejection, batch rows, remembered losses
(scored.py: scored.jsonl). needle.py: LongRoPE2's needle documents. fitness.py: the objectives
by name (perplexity, needle) and what a candidate means. driver.py: one search with its files,
for `longrope search` and the recipe. distributed.py: scoring a generation across torchrun
processes. plots.py: figures.
"""
