"""The settings the commands and the recipe share, each declared once (`longrope.options`):
which model and how it computes, which documents, which lengths and methods, where results go.
A command adds the flags of the dataclasses it needs; a recipe reads its keys from the same
declarations, so a setting has one type, one bound, one default and one help everywhere."""
from __future__ import annotations

from dataclasses import dataclass

from .data import CORPUS_HELP, DEFAULT_CORPUS, SPLIT_NAMES
from .errors import UsageError
from .defaults import AUTO, CHUNK_SIZE, DTYPES
from .methods import METHODS
from .options import check_options, option

SPLITS = (*SPLIT_NAMES, "all")
EVAL_SPLIT = "validation"  # what evaluations read by default: the search never scores on it
# the longest sequence a length flag takes: 16M tokens, 8x LongRoPE's 2048k (a larger one is a typo,
# and would exhaust memory building its inputs before any message)
MAX_LENGTH = 1 << 24
OWN = "model"  # the method name of the factors a model carries
DEFAULT_METHODS = ("none", "pi", "ntk", "yarn")
PEERS = tuple(n for n in METHODS if n not in ("none", "longrope"))  # searched factors come as a file


def default_lengths(native: int, up_to: int | None = None) -> list[int]:
    """1x, 2x, 4x, 8x the native context (or doubling up to `up_to`): what an evaluation measures
    when no lengths are given."""
    if up_to is None:
        return [native, 2 * native, 4 * native, 8 * native]
    out, n = [], native
    while n <= up_to:
        out.append(n)
        n *= 2
    return out


@dataclass(frozen=True)
class ModelOptions:
    """Which model, and how it computes."""

    model: str = option("tiny", "preset (tiny, tiny-128, smollm2-135m), Hugging Face model directory, or .gguf file")
    dtype: str = option(AUTO, "compute dtype; auto = bf16 on GPUs and on CPUs with AMX or AVX512-BF16, else fp32",
                        choices=DTYPES)
    device: str | None = option(None, "torch device", default_help="cuda if available, else cpu")

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class CorpusOptions:
    """Which documents: a corpus, one of its seeded splits, how many."""

    corpus: str | None = option(None, CORPUS_HELP, default_help=DEFAULT_CORPUS)
    split: str = option(EVAL_SPLIT, "which seeded split of the corpus (40/30/30 search/validation/test) to read; a "
                        "corpus of one or two documents has only the first splits: use all", choices=SPLITS)
    split_seed: int = option(0, "seed of the corpus split", min=0)
    docs: int = option(8, "documents per length (each truncated to the length, one pass each)", min=1, max=100_000)

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class TargetOptions:
    """The context to extend to."""

    target_length: int | None = option(None, "the context to extend to, in tokens (an evaluation sets every peer "
                                       "method for it; default there: the largest length)", min=2, max=MAX_LENGTH)


@dataclass(frozen=True)
class LengthOptions(TargetOptions):
    """What an evaluation measures: lengths, and the methods and factors files compared."""

    lengths: list[int] | None = option(None, "comma-separated context lengths in tokens",
                                       default_help="1x,2x,4x,8x the native context", min=2, max=MAX_LENGTH)
    methods: list[str] | None = option(
        None, f"comma-separated methods: none (the original RoPE, even for a model that carries factors), {OWN} (the "
        f"factors the model carries: a fine-tuned or exported longrope model), {', '.join(PEERS)}",
        default_help=f"{','.join(DEFAULT_METHODS)}, plus {OWN} for a model that carries factors",
        choices=("none", OWN, *PEERS))
    factors: list[str] = option([], "a factors file (longrope search output, an HF config with longrope factors, or "
                                "a shipped name); may be repeated; each is evaluated as one more method",
                                repeat=True, metavar="F.json")

    def __post_init__(self):
        check_options(self)
        if self.lengths == []:
            raise UsageError("--lengths needs one or more values, each >= 2")
        if self.methods == [] and not self.factors:
            raise UsageError("nothing to evaluate: give --methods and/or --factors")


@dataclass(frozen=True)
class FactorsOption:
    """One extension given as a file (a command that uses one: finetune, export, lm-eval)."""

    factors: str | None = option(None, "a factors file (longrope search output), a shipped name, or an HF config.json "
                                 "or model directory carrying longrope factors", metavar="F.json")


@dataclass(frozen=True)
class DepthOptions:
    """How a retrieval heat map bins its trials by needle depth."""

    depth_bins: int = option(5, "rows of the heat map (needle depth bins)", min=1, max=50)


@dataclass(frozen=True)
class LossOptions:
    """How a loss is summed."""

    chunk_size: int = option(CHUNK_SIZE, "tokens per LM-head chunk in the loss", min=1)

    def __post_init__(self):
        check_options(self)
        getattr(super(), "__post_init__", lambda: None)()  # the next settings class's checks, when one derives
