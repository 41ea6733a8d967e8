"""lm-evaluation-harness on any extension, without exporting: the `longrope` model of lm-eval.

`LongRopeLM` is lm-eval's Hugging Face model (`HFLM`) around a model loaded by `load_model`,
with one extension installed through the seam. So what an export cannot carry stays in force:
the start token n_hat, the short attention factor, `attention_by_length`, and the short/long
switch by length. Importing this module registers the model under the name `longrope`:

    import lm_eval, longrope.evaluate.harness
    lm_eval.simple_evaluate(model="longrope", model_args="model=tiny,method=yarn,target_length=2048",
                            tasks=["hellaswag"])

and `python -m longrope.evaluate.harness --model longrope --model_args ... --tasks ...` is lm-eval's
own command line with it registered. `longrope lm-eval` runs it into an output folder. This is
the one module that imports lm_eval (importing longrope does not).
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from lm_eval.api.registry import model_registry
from lm_eval.models.huggingface import HFLM

from ..settings import OWN
from .frontend import factor_files, method_names, method_variants
from ..errors import UsageError, gist
from ..generate import greedy_generate
from ..methods import attention_factor_at_length, factors_at_length
from ..defaults import AUTO
from ..models.load import LoadedModel, load_model, model_spec
from ..seam import install_rope
from .runner import Variant

NAME = "longrope"  # the model's name in lm-eval's registry
UNSCALED = ("none", OWN)  # the methods that extend to no target length of their own
GREEDY_IGNORES = {"do_sample", "temperature", "top_p", "top_k"}  # generation settings greedy decoding has no use for
HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # lm-eval users' spellings


# -- which extension ----------------------------------------------------------------------------
def check_choice(model: str, method: str | None, factors: str | None, target_length: int | None) -> None:
    """Fail on a bad method, factors file or target length before any weights are loaded."""
    if method and factors:
        raise UsageError("give a method or a factors file, not both")
    if factors and target_length is not None:
        raise UsageError("a factors file carries its own target length: leave the target length out")
    if method:
        names = method_names([m.strip() for m in method.split(",") if m.strip()])
        if len(names) != 1:
            raise UsageError(f"one method at a time, got {method!r}")
        native = None if names[0] in UNSCALED else model_spec(model).original_max_position_embeddings  # config only
        if native is not None and (target_length is None or target_length <= native):
            raise UsageError(f"method {names[0]!r} needs a target length above the model's native context {native} "
                             f"(--target-length N, or target_length=N in lm-eval's model_args)")
    factor_files([str(factors)] if factors else [])


def choose_variant(loaded: LoadedModel, method: str | None, factors: str | None,
                   target_length: int | None) -> Variant:
    """The one extension to evaluate: a method by name, set for `target_length`, or a factors file
    or shipped name; neither is `model` (the model's own factors) for a model that carries them,
    else `none`. The choice passed `check_choice` for this model."""
    if not method and not factors:
        method = OWN if loaded.own_extension is not None else "none"
    native = loaded.spec.original_max_position_embeddings
    [variant] = method_variants([method] if method else [], [str(factors)] if factors else [], loaded,
                                target_length or native)
    return variant


# -- the model lm-eval sees ---------------------------------------------------------------------
class _PassedModelNotes(logging.Filter):
    """HFLM's two warnings for a model passed in already loaded, which is how this one works."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(("`pretrained` model kwarg is not of type", "Passed an already-initialized model"))


class LongRopeLM(HFLM):
    """lm-eval's HF model on a longrope-loaded model with one extension installed through the seam.

    model: a preset, HF model directory or .gguf (`pretrained` is another name for it; default tiny).
    method: none, model, pi, ntk, dynamic-ntk, yarn or llama3 (default: model for a model that carries
    factors, else none); factors: a factors file or shipped name, instead of a method;
    target_length: the context a named method extends to. max_length, the window lm-eval truncates
    prompts to (from the left), defaults to the extension's target length (the native context for
    none). The other keyword arguments go to HFLM (batch_size, add_bos_token, ...).
    """

    def __init__(self, model: str | None = None, method: str | None = None, factors: str | None = None,
                 target_length: int | None = None, dtype: str = AUTO, device: str | None = None,
                 pretrained: str | None = None, max_length: int | None = None, **kwargs: Any):
        model = str(model or pretrained or "tiny")
        check_choice(model, method, factors, target_length)
        loaded = load_model(model, HF_DTYPES.get(str(dtype), str(dtype)), device)
        variant = choose_variant(loaded, method, factors, target_length)
        self.rope = install_rope(loaded.model, variant.extension)  # also `none`: it drops carried factors
        ext, native = variant.extension, loaded.spec.original_max_position_embeddings
        window = max_length or (native if ext is None else ext.max_position_embeddings)
        hf_log = logging.getLogger("lm_eval.models.huggingface")
        notes = _PassedModelNotes()
        hf_log.addFilter(notes)
        try:
            super().__init__(pretrained=loaded.model, tokenizer=loaded.tokenizer, max_length=window, **kwargs)
        finally:
            hf_log.removeFilter(notes)
        self.longrope = {"model": loaded.name, "method": variant.label,
                         "target_length": None if ext is None else ext.max_position_embeddings,
                         "native_context": native, "max_length": window,
                         "extension": None if ext is None else ext.to_dict()}
        self._tables: dict[int, Any] = {}

    def get_model_info(self) -> dict:
        """What lm-eval records of the model in results["config"], the extension included (and no
        query to a model hub, which HFLM makes for a model's revision)."""
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype), "longrope": self.longrope}

    def _tables_at(self, n: int) -> Any:
        """What the rotary module uses for a sequence of n tokens: its factors and attention factor."""
        ext = self.rope.extension
        if ext is None:
            return None
        if n not in self._tables:
            self._tables[n] = (tuple(factors_at_length(ext, self.rope.spec, n).tolist()),
                               attention_factor_at_length(ext, n))
        return self._tables[n]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """HFLM's scoring, each batch holding only requests that one set of rotary tables serves.
        A batch runs at the length of its longest row (the others are right-padded) and the
        factors in force follow that length, so a short row batched with one past the native
        context would be scored with the long factors."""
        groups: dict[Any, list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            n = min(len(context) + len(continuation) - 1, self.max_length)  # the row HFLM runs
            groups.setdefault(self._tables_at(n), []).append(i)
        if len(groups) == 1 or self.batch_size == 1:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        scores: list[Any] = [None] * len(requests)
        for rows in groups.values():
            got = super()._loglikelihood_tokens([requests[i] for i in rows], disable_tqdm, override_bs)
            for i, score in zip(rows, got):
                scores[i] = score
        return scores

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """Greedy requests are decoded one at a time by `greedy_generate`, which re-prefills at the
        step that crosses the native context (transformers' generate keeps the keys cached before
        it, rotated with the short factors); sampling, beam search and other settings go to transformers.
        context: [B, T] left-padded -> [B, max_length], the new tokens after column T, then padding."""
        mask = generation_kwargs.pop("attention_mask", None)
        if generation_kwargs.get("do_sample") or not set(generation_kwargs) <= GREEDY_IGNORES:
            return super()._model_generate(context, max_length, stop, attention_mask=mask, **generation_kwargs)
        B, T = context.shape
        out = torch.full((B, max_length), self.tokenizer.pad_token_id, dtype=context.dtype, device=context.device)
        out[:, :T] = context
        stops = [s for s in stop if s]

        def stopped(new: torch.Tensor) -> bool:  # a stop string in the text so far
            text = self.tok_decode(new.tolist(), skip_special_tokens=False)
            return any(s in text for s in stops)

        for b in range(B):
            row = context[b] if mask is None else context[b][mask[b].bool()]  # [T_b], the left padding dropped
            new = greedy_generate(self.model, row[None], max_length - T, self.eot_token_id, stop=stopped)
            out[b, T : T + len(new)] = new
        return out


if NAME not in model_registry:  # once, also when this file runs as __main__ and is imported again
    model_registry.register(NAME)(LongRopeLM)


# -- tasks ----------------------------------------------------------------------------------------
class TaskSet(NamedTuple):
    names: list[str]  # the requested names, globs expanded
    items: list  # the loaded lm-eval Tasks and Groups, top level only, as simple_evaluate takes them
    manager: Any  # the TaskManager that found them


def _data_error(e: BaseException) -> bool:
    """An error reading a task's data (a dataset not on this machine, no network), not a bug."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("datasets", "huggingface_hub", "fsspec")


def load_tasks(names: list[str], include_path: str | None = None) -> TaskSet:
    """lm-eval tasks, groups or tags by name (globs allowed), loaded with their data.

    UsageError names the unknown ones, or says which data could not be read. When every name is
    a task under `include_path`, lm-eval's own ~15,000 tasks are not indexed (seconds saved).
    """
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        manager = local if all(n in local.all_subtasks for n in names) else None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [n for n in names if not manager.match_tasks([n])]
    if unknown:
        where = f" under {include_path} or" if include_path else ""
        raise UsageError(f"unknown task(s) {', '.join(unknown)}: not found{where} among lm-eval's tasks "
                         f"(`lm-eval ls tasks` lists them; --include-path DIR adds a folder of task YAMLs)")
    found = manager.match_tasks(names)
    try:
        loaded = manager.load(found)
    except Exception as e:
        if not _data_error(e):
            raise
        raise UsageError(f"cannot read the data of {', '.join(found)}: {gist(e)} (lm-eval's own tasks read their "
                         f"datasets from the Hugging Face hub)") from None
    inside = {id(x) for g in loaded["groups"].values() for x in (*g.get_all_tasks(), *g.get_all_groups())}
    items = [x for x in (*loaded["groups"].values(), *loaded["tasks"].values()) if id(x) not in inside]
    return TaskSet(found, items, manager)


def run_tasks(lm: LongRopeLM, tasks: TaskSet, limit: int | None = None, num_fewshot: int | None = None) -> dict:
    """lm-eval's `simple_evaluate` of `tasks` on `lm`: its results dict (with per-sample records)."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=tasks.items, task_manager=tasks.manager, limit=limit,
                           num_fewshot=num_fewshot, log_samples=True,
                           batch_size=lm.batch_size, device=str(lm.device))  # only recorded: lm has them


if __name__ == "__main__":  # lm-eval's command line, with --model longrope registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
