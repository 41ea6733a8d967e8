"""A synthetic long-context task suite in the spirit of RULER (Hsieh et al., arXiv 2404.06654).

Four tasks, each one small generator in the `TASKS` registry: single needle, multi-key
needle (one of several keys is asked), multi-value needle (every value of one key must be
recovered) and variable tracking (which variables end up holding a value). Nothing is
downloaded: needles come from a seeded `random.Random`, the haystack is real text of the
corpus (as RULER's essay haystack) or the standard passkey filler (RULER's "noise").

A task instance (`TaskSample`) is text pieces plus needles with depths; `fit_prompt`
fills the haystack so the prompt is as long as possible within `length - max_new_tokens`
tokens and places each needle at its depth. Scoring is RULER's exact match: the share of
expected strings contained in the greedy output (`score_output`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UsageError
from ..generate import greedy_generate
from ..options import option
from .passkey import FILLER

# Keys are adjective-noun pairs, as RULER's `words` keys (there drawn from wonderwords).
ADJECTIVES = (
    "amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "cold", "crimson", "curious",
    "dusty", "eager", "electric", "fancy", "fierce", "gentle", "golden", "hollow", "humble", "icy",
    "jolly", "lively", "lonely", "lucky", "misty", "noisy", "odd", "pale", "polite", "proud",
    "quiet", "rapid", "rusty", "silent", "silver", "sleepy", "smooth", "steady", "tall", "wild",
)
NOUNS = (
    "anchor", "badger", "bridge", "candle", "canyon", "castle", "comet", "compass", "dragon", "falcon",
    "forest", "garden", "glacier", "harbor", "helmet", "island", "jungle", "kettle", "lantern", "meadow",
    "mirror", "monkey", "needle", "orchard", "otter", "palace", "pebble", "pepper", "pigeon", "planet",
    "rabbit", "river", "saddle", "shadow", "spider", "teacup", "thunder", "tiger", "violin", "walrus",
)

# Templates after RULER's niah and variable-tracking templates (arXiv 2404.06654):
# an instruction, the haystack, a question, and an answer prefix the model continues (after
# the assistant turn's header when the chat template is used, as RULER does for chat models).
NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards."
)
NIAH_QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
NIAH_PREFIX = "The special magic number for {key} mentioned in the provided text is"
NIAH_QUESTION_ALL = "What are all the special magic numbers for {key} mentioned in the provided text?"
NIAH_PREFIX_ALL = "The special magic numbers for {key} mentioned in the provided text are"
VT_INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
VT_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
    "assigned the value {value}, they are:"
)


@dataclass
class TaskSample:
    """One task instance before fitting: the text around the haystack, the needles to place
    (text, depth in [0, 1]; the first one is the queried needle) and the expected answers."""

    task: str
    instruction: str
    needles: list[tuple[str, float]]
    question: str
    answer_prefix: str
    expected: list[str]


@dataclass(frozen=True)
class TaskDef:
    generate: Callable[[random.Random, float], TaskSample]  # (rng, depth) -> sample
    max_new_tokens: int  # greedy tokens decoded for the answer
    haystack: str  # "corpus" or "filler": RULER's choice for the task
    help: str


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _distinct(draw: Callable[[random.Random], str], rng: random.Random, n: int) -> list[str]:
    """n distinct draws, in the order drawn (a repeat is drawn again)."""
    out: list[str] = []
    while len(out) < n:
        x = draw(rng)
        if x not in out:
            out.append(x)
    return out


def _keys(rng: random.Random, n: int) -> list[str]:
    return _distinct(_key, rng, n)


def _value(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))  # 7 digits, as RULER's numbers


def _values(rng: random.Random, n: int) -> list[str]:
    return _distinct(_value, rng, n)


def single_needle(rng: random.Random, depth: float) -> TaskSample:
    """One needle; the question asks for its value (RULER niah_single)."""
    key, value = _key(rng), _value(rng)
    return TaskSample("single-needle", NIAH_INSTRUCTION, [(NEEDLE.format(key=key, value=value), depth)],
                      NIAH_QUESTION.format(key=key), NIAH_PREFIX.format(key=key), [value])


def multi_key(rng: random.Random, depth: float, n_keys: int = 4) -> TaskSample:
    """n_keys needles with distinct keys; one is asked, the others distract (RULER niah_multikey_1)."""
    keys, values = _keys(rng, n_keys), _values(rng, n_keys)
    needles = [(NEEDLE.format(key=keys[0], value=values[0]), depth)]
    needles += [(NEEDLE.format(key=k, value=v), rng.random()) for k, v in zip(keys[1:], values[1:])]
    return TaskSample("multi-key", NIAH_INSTRUCTION, needles, NIAH_QUESTION.format(key=keys[0]),
                      NIAH_PREFIX.format(key=keys[0]), [values[0]])


def multi_value(rng: random.Random, depth: float, n_values: int = 4) -> TaskSample:
    """n_values needles of the same key; all values must be recovered (RULER niah_multivalue)."""
    key, values = _key(rng), _values(rng, n_values)
    needles = [(NEEDLE.format(key=key, value=values[0]), depth)]
    needles += [(NEEDLE.format(key=key, value=v), rng.random()) for v in values[1:]]
    return TaskSample("multi-value", NIAH_INSTRUCTION, needles, NIAH_QUESTION_ALL.format(key=key),
                      NIAH_PREFIX_ALL.format(key=key), values)


def _var_name(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def _var_names(rng: random.Random, n: int) -> list[str]:
    return _distinct(_var_name, rng, n)


def _chain(names: list[str], value: str) -> list[str]:
    """`VAR A = v.`, `VAR B = VAR A.`, ...: every name in the chain ends up holding v."""
    return [f"VAR {names[0]} = {value}.", *(f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:]))]


def variable_tracking(rng: random.Random, depth: float, hops: int = 4, chains: int = 1) -> TaskSample:
    """`chains` chains of `hops` hops with distinct values; asked: every variable holding the
    first chain's value (RULER vt: one chain of four hops, after one worked example in the
    filler). The asked chain starts at `depth`, its later links follow at random depths after it;
    other chains start at random depths."""
    names = _var_names(rng, (chains + 1) * (hops + 1))
    values = _values(rng, chains + 1)
    ex_names, ex_value = names[: hops + 1], values[0]
    example = " ".join(f"{FILLER} {link}" for link in _chain(ex_names, ex_value))
    solved = f"{VT_QUESTION.format(value=ex_value)} {VT_PREFIX.format(n=hops + 1, value=ex_value)} {' '.join(ex_names)}"
    instruction = f"{VT_INSTRUCTION}\n\n{example} {FILLER}\n\n{solved}\n\n{VT_INSTRUCTION}"
    needles = []
    for c in range(1, chains + 1):
        chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        start = depth if c == 1 else rng.random()
        depths = [start, *sorted(start + (1 - start) * rng.random() for _ in range(hops))]
        needles += list(zip(_chain(chain, values[c]), depths))
    asked = names[hops + 1 : 2 * (hops + 1)]
    return TaskSample("variable-tracking", instruction, needles, VT_QUESTION.format(value=values[1]),
                      VT_PREFIX.format(n=hops + 1, value=values[1]), asked)


TASKS: dict[str, TaskDef] = {
    "single-needle": TaskDef(single_needle, 16, "corpus", "one needle; recall its 7-digit value"),
    "multi-key": TaskDef(multi_key, 16, "corpus", "four needles with different keys; recall the asked one"),
    "multi-value": TaskDef(multi_value, 48, "corpus", "four values of one key; recall all four"),
    "variable-tracking": TaskDef(variable_tracking, 32, "filler",
                                 "a 4-hop chain of VAR assignments in filler text; name all 5 variables"),
}


@dataclass
class TaskSettings:
    """How the prompts of a run are made (besides the corpus, the tasks and the lengths): the
    `longrope tasks` flags, and part of the key under which a finished cell is reused."""

    trials: int = option(10, "trials per task, length and method")
    seed: int = option(0, "seed of needles, depths and haystack windows")
    haystack: str | None = option(None, "haystack text of every task: the corpus split's documents, or the "
                                  "passkey filler sentences", choices=["corpus", "filler"],
                                  default_help="each task's own, as RULER: filler for variable-tracking, "
                                  "corpus for the needle tasks")
    chat: str = option("auto", "put the prompt in the tokenizer's chat template, the answer prefix opening the "
                       "assistant turn (auto = when the tokenizer has a chat template)", choices=["auto", "on", "off"])


def get_task(name: str) -> TaskDef:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


# -- haystack --------------------------------------------------------------------------------
class Haystack:
    """Haystack text: a window of `text` (read cyclically) from a line, sentence or word start
    chosen by the rng.
    `text` is the corpus's documents joined, or the passkey filler repeated."""

    def __init__(self, text: str):
        if not text.strip():
            raise UsageError("the haystack text is empty")
        self.text = text

    @classmethod
    def filler(cls) -> "Haystack":
        return cls(" ".join([FILLER] * 64) + " ")

    def window(self, rng: random.Random, n_chars: int) -> str:
        start = _boundary(self.text, rng.randrange(len(self.text)))
        pieces, need = [], n_chars
        while need > 0:  # past the end, continue from the beginning
            piece = self.text[start : start + need]
            pieces.append(piece)
            need, start = need - len(piece), 0
        return "".join(pieces)


def _boundary(text: str, pos: int, reach: int = 200) -> int:
    """The last line start at or before `pos`, else a sentence start, else a word start,
    whichever is found within `reach` characters (else the text's start if that is within
    reach, else `pos` itself)."""
    for sep in ("\n", ". ", " "):
        i = text.rfind(sep, max(0, pos - reach), pos)
        if i >= 0:
            return i + len(sep)
    return 0 if pos <= reach else pos


def render(sample: TaskSample, hay: str) -> tuple[str, float]:
    """The user's text (instruction, haystack with the needles placed, question) and the
    queried needle's depth (fraction of the haystack's characters before it)."""
    reach = max(16, len(hay) // 100)  # a needle lands within 1% of its depth (or 16 characters)
    at = [(_boundary(hay, round(d * len(hay)), reach), i, text) for i, (text, d) in enumerate(sample.needles)]
    pieces, last = [], 0
    for pos, _, text in sorted(at):  # by position, ties in the listed order (VT chains stay ordered)
        pieces += [hay[last:pos], text, "\n"]
        last = pos
    pieces.append(hay[last:])
    depth = at[0][0] / len(hay) if hay else sample.needles[0][1]
    return f"{sample.instruction}\n\n{''.join(pieces)}\n\n{sample.question}", depth


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, user: str, answer_prefix: str, chat: bool) -> tuple[torch.Tensor, str]:
    """Token ids [1, T] and text of the prompt. With `chat`, the user turn goes through the
    tokenizer's chat template and the answer prefix opens the assistant turn (RULER's setup
    for chat models); without, the prefix follows the question."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True) + answer_prefix
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids, text
    text = f"{user} {answer_prefix}"
    return tokenizer(text, return_tensors="pt").input_ids, text


@dataclass
class TaskPrompt:
    task: str
    length: int  # requested tokens, prompt + answer
    depth: float  # where the queried needle landed, in [0, 1]
    input_ids: torch.Tensor = field(repr=False)  # [1, T], T <= length - max_new_tokens
    text: str = field(repr=False)
    expected: list[str] = field(default_factory=list)
    max_new_tokens: int = 0


def _cut(text: str, n: int) -> str:
    """The first n characters of text, ending at a word boundary."""
    if n >= len(text):
        return text
    space = max(text.rfind(" ", 0, n), text.rfind("\n", 0, n))
    return text[:space] if space > 0 else ""


class TooShort(UsageError):
    """Lengths too short for some tasks' prompts even without haystack; `needs`: task -> the
    fewest tokens seen to fit it (prompt and answer)."""

    def listed(self) -> str:
        return ", ".join(f"{task} needs at least {n} tokens" for task, n in self.needs.items())

    def __init__(self, needs: dict[str, int], lengths: list[int]):
        self.needs = needs
        listed = self.listed()
        shown = ", ".join(str(n) for n in lengths)
        super().__init__(f"{'length' if len(lengths) == 1 else 'lengths'} {shown} "
                         f"{'is' if len(lengths) == 1 else 'are'} too short: {listed}")


def fit_prompt(tokenizer, sample: TaskSample, haystack: Haystack, length: int, max_new_tokens: int,
               rng: random.Random, chat: bool = False) -> TaskPrompt:
    """The longest prompt of `sample` within `length - max_new_tokens` tokens: the haystack is
    a window of `haystack` cut by binary search on its characters. UsageError when even the
    prompt without haystack does not fit."""
    budget = length - max_new_tokens

    def encode(hay: str):
        user, depth = render(sample, hay)
        return (*encode_prompt(tokenizer, user, sample.answer_prefix, chat), depth)

    ids, text, depth = encode("")
    if ids.shape[1] > budget:
        raise TooShort({sample.task: ids.shape[1] + max_new_tokens}, [length])
    # enough characters for the budget: measure the haystack's characters per token on a sample
    probe = haystack.window(random.Random(0), 4000)
    per_token = len(probe) / max(1, tokenizer(probe, return_tensors="pt").input_ids.shape[1])
    window = haystack.window(rng, int(1.5 * per_token * budget) + 1000)
    lo, hi = 0, len(window)  # invariant: a haystack cut at lo characters fits
    best = (ids, text, depth)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = encode(_cut(window, mid))
        if got[0].shape[1] <= budget:
            lo, best = mid, got
        else:
            hi = mid - 1
    ids, text, depth = best
    return TaskPrompt(sample.task, length, depth, ids, text, sample.expected, max_new_tokens)


def build_prompts(tokenizer, haystacks: dict[str, Haystack], tasks: list[str], lengths: list[int], trials: int,
                  seed: int, chat: bool = False) -> list[TaskPrompt]:
    """Every (task, length, trial) prompt, each from its own seeded rng, so the prompts do not
    depend on the method evaluated nor on which other tasks or lengths are run. Depths are
    stratified: trial i of n draws its depth in [i/n, (i+1)/n). haystacks: "corpus" and/or
    "filler" -> Haystack; each task reads the one its TaskDef names. TooShort names every task
    that some length cannot hold, with the most tokens one of its prompts needed."""
    prompts, needs, short = [], {}, set()
    for task in tasks:
        spec = get_task(task)
        for length in lengths:
            for i in range(trials):
                rng = random.Random(f"{seed}:{task}:{length}:{i}")
                sample = spec.generate(rng, (i + rng.random()) / trials)
                try:
                    prompts.append(fit_prompt(tokenizer, sample, haystacks[spec.haystack], length,
                                              spec.max_new_tokens, rng, chat))
                except TooShort as e:
                    needs[task] = max(needs.get(task, 0), e.needs[task])
                    short.add(length)
    if needs:
        raise TooShort(needs, sorted(short))
    return prompts


# -- scoring ---------------------------------------------------------------------------------
def score_output(output: str, expected: list[str]) -> float:
    """RULER's string_match_all: the share of expected strings found in the output (case-insensitive)."""
    out = output.lower()
    return sum(e.lower() in out for e in expected) / len(expected)


@dataclass
class TaskTrial:
    task: str
    length: int
    prompt_tokens: int
    depth: float
    expected: list[str]
    output: str
    score: float
    correct: bool  # every expected string was found


def run_prompt(model, tokenizer, prompt: TaskPrompt) -> TaskTrial:
    """Greedy-decode the answer to one prompt (KV cache, stops at EOS) and score it."""
    out = greedy_generate(model, prompt.input_ids, prompt.max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out.tolist(), skip_special_tokens=True)
    score = score_output(text, prompt.expected)
    return TaskTrial(prompt.task, prompt.length, prompt.input_ids.shape[1], prompt.depth, prompt.expected,
                     text, score, score == 1.0)
