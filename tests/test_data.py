"""Corpora: loading each format, the seeded split, tokenizing and truncating documents."""
import json

import pytest
import torch

from longrope.data import (
    SPLIT_NAMES,
    Document,
    TokenDoc,
    corpus_summary,
    documents_of_length,
    load_corpus,
    select_split,
    split_corpus,
    tokenize_corpus,
)
from longrope.errors import UsageError


pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_default_corpus_is_stdlib_sources_and_pydoc_topics():
    docs = load_corpus()
    names = [d.name for d in docs]
    assert docs == load_corpus("stdlib")  # deterministic
    assert "json/decoder.py" in names and "argparse.py" in names
    assert any(n.startswith("pydoc_data/topics.py:") for n in names)
    assert not any(n.startswith(("test/", "site-packages/", "idlelib/idle_test/")) or "/test/" in n for n in names)
    assert len(names) == len(set(names)) and len(docs) > 300
    prose = next(d for d in docs if d.name == "pydoc_data/topics.py:specialnames")
    assert "\\n" not in prose.text[:200] and len(prose.text) > 20000  # real text, not the escaped literal


def test_txt_directory_file_and_jsonl(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "sub" / "a.txt").write_text("first")
    (tmp_path / "d" / "empty.txt").write_text("  \n")
    (tmp_path / "d" / "skip.md").write_text("not a txt")
    assert load_corpus(str(tmp_path / "d")) == [Document("b.txt", "second"), Document("sub/a.txt", "first")]
    assert load_corpus(str(tmp_path / "d" / "b.txt")) == [Document("b.txt", "second")]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "name": "doc2"}) + "\n")
    assert load_corpus(str(jl)) == [Document("c.jsonl:1", "one"), Document("doc2", "two")]


@pytest.mark.parametrize(
    "content, message",
    [("{not json\n", "c.jsonl:1 is not valid JSON"), ('{"txt": "x"}\n', "string field 'text'"), ("\n", "no non-empty")],
)
def test_bad_jsonl_is_a_one_line_usage_error(tmp_path, content, message):
    jl = tmp_path / "c.jsonl"
    jl.write_text(content)
    with pytest.raises(UsageError, match=message) as e:
        load_corpus(str(jl))
    assert "\n" not in str(e.value)


def test_package_corpus_keeps_each_package_whole_and_long():
    docs = load_corpus("stdlib-packages")
    by_name = {d.name: d for d in docs}
    assert docs == load_corpus("stdlib-packages") and len(by_name) == len(docs)
    modules = {d.name: d.text for d in load_corpus("stdlib")}
    email = by_name["email/"].text  # a package: its modules in path order, each under a header line
    heads = [line[len("# file: "):] for line in email.splitlines() if line.startswith("# file: email/")]
    assert heads == sorted(heads, key=lambda h: h.split("/")) and len(heads) > 20
    assert {n for n in modules if n.startswith("email/")} <= set(heads)  # (empty __init__.py are headers only)
    assert modules["email/utils.py"] in email
    assert by_name["argparse.py"].text == modules["argparse.py"]  # a top-level module stays one document
    topics = by_name["pydoc_data/topics.py"].text  # every help topic, as prose
    assert modules["pydoc_data/topics.py:specialnames"] in topics
    # every split holds documents longer than any module of that split in the default corpus
    for split, chosen in split_corpus(docs).items():
        longest_module = max(len(d.text) for d in split_corpus(load_corpus("stdlib"))[split])
        assert sum(len(d.text) > longest_module for d in chosen) >= 3


def test_bad_paths(tmp_path):
    with pytest.raises(UsageError, match="corpus not found"):
        load_corpus(str(tmp_path / "missing"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UsageError, match="neither a directory"):
        load_corpus(str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no non-empty documents"):
        load_corpus(str(tmp_path / "empty"))


def _docs(n):
    return [Document(f"doc{i:03d}", "x" * (10 + 37 * i % 1000)) for i in range(n)]


def test_split_is_deterministic_disjoint_and_covers_everything():
    docs = _docs(200)
    a, b = split_corpus(docs, seed=0), split_corpus(list(reversed(docs)), seed=0)
    assert set(a) == set(SPLIT_NAMES)
    for s in SPLIT_NAMES:
        assert {d.name for d in a[s]} == {d.name for d in b[s]}  # input order does not matter
    names = [d.name for s in SPLIT_NAMES for d in a[s]]
    assert sorted(names) == sorted(d.name for d in docs)  # disjoint and complete
    assert [len(a[s]) for s in SPLIT_NAMES] == [80, 60, 60]
    assert split_corpus(docs, seed=1) != a  # the seed matters
    assert select_split(docs, "test") == a["test"] and select_split(docs, "all") == docs
    with pytest.raises(UsageError, match="unknown split"):
        select_split(docs, "train")


def test_split_gives_every_split_long_documents():
    docs = _docs(100)
    longest = sorted(docs, key=lambda d: -len(d.text))[:10]
    for seed in range(5):
        splits = split_corpus(docs, seed)
        for s in SPLIT_NAMES:
            assert any(d in splits[s] for d in longest)
    tiny = split_corpus(_docs(3))
    assert [len(tiny[s]) for s in SPLIT_NAMES] == [1, 1, 1]


def test_documents_of_length_truncates_longest_first():
    docs = [TokenDoc("a", torch.arange(10)), TokenDoc("b", torch.arange(30)), TokenDoc("c", torch.arange(20))]
    out = documents_of_length(docs, 15)
    assert [len(x) for x in out] == [15, 15] and out[0].dtype == torch.long
    assert torch.equal(out[0], torch.arange(15))
    assert len(documents_of_length(docs, 15, count=1)) == 1
    assert len(documents_of_length(docs, 5, count=10)) == 3  # fewer than asked: the caller decides
    with pytest.raises(UsageError) as e:
        documents_of_length(docs, 8192)
    assert str(e.value) == (
        "no document reaches 8192 tokens (longest: 30 tokens, 'b'); "
        "use a shorter length or a corpus of longer documents"
    )


def test_tokenize_corpus_adds_bos_and_caches(tmp_path):
    from longrope.train.pretrain import train_tokenizer

    docs = [Document("a", "def f(x):\n    return x + 1\n" * 20), Document("b", "The sky is blue. " * 30)]
    tok = train_tokenizer([d.text for d in docs], vocab_size=300)
    first = tokenize_corpus(tok, docs)
    assert [t.name for t in first] == ["a", "b"]
    assert all(t.ids[0] == tok.bos_token_id and t.ids.dtype == torch.long for t in first)
    assert torch.equal(first[1].ids[1:], torch.tensor(tok(docs[1].text, add_special_tokens=False).input_ids))
    assert list((tmp_path / "cache" / "tokens").glob("*.pt"))
    again = tokenize_corpus(tok, docs)  # from the cache
    assert all(torch.equal(x.ids, y.ids) for x, y in zip(first, again))
    no_bos = tokenize_corpus(tok, docs, add_bos=False)
    assert torch.equal(no_bos[0].ids, first[0].ids[1:])
    summary = corpus_summary(first)
    assert summary.documents == 2 and summary.tokens == sum(len(t.ids) for t in first)
    assert summary.longest_tokens == max(len(t.ids) for t in first) and str(summary).startswith("2 documents")


def test_bos_only_where_the_tokenizer_adds_it_itself():
    """SmolLM2-style tokenizers have a BOS token but never add it: neither do we."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from longrope.data import adds_bos
    from longrope.train.pretrain import train_tokenizer

    docs = [Document("a", "x = 1\n" * 50)]
    llama_style = train_tokenizer([docs[0].text], vocab_size=300)
    backend = Tokenizer.from_str(llama_style.backend_tokenizer.to_str())
    backend.post_processor = None
    gpt2_style = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    assert adds_bos(llama_style) and not adds_bos(gpt2_style)
    with_bos, without = tokenize_corpus(llama_style, docs)[0], tokenize_corpus(gpt2_style, docs)[0]
    assert with_bos.ids[0] == llama_style.bos_token_id and torch.equal(with_bos.ids[1:], without.ids)


def test_mixed_corpus_keeps_each_document_in_its_own_split(monkeypatch):
    """Held-out prose and code stay held out when the search reads both: a document of `mixed`
    is in the split it has in `stdlib-packages` or `gutenberg`, for any split seed."""
    import longrope.data as data

    books = [data.Document(f"book{i}.txt", "word " * (1000 * (i + 1))) for i in range(12)]
    monkeypatch.setattr(data, "gutenberg_documents", lambda: books)
    for seed in (0, 3):
        own = {d.name: split for part in (data.stdlib_package_documents(), books)
               for split, docs in data.split_corpus(part, seed).items() for d in docs}
        mixed = data.split_corpus(data.load_corpus("mixed", seed), seed)
        assert {d.name: split for split, docs in mixed.items() for d in docs} == own
        assert sum(len(v) for v in mixed.values()) == len(own)


@pytest.mark.slow
def test_gutenberg_is_fetched_once_with_npm_as_utf8_prose(isolated_cache):
    import longrope.data as data

    docs = data.load_corpus("gutenberg")
    assert [d.name for d in docs] == [f"{b}.txt" for b in data.PROSE_BOOKS]
    assert "Emma Woodhouse, handsome, clever, and rich" in docs[0].text
    assert "Brunetière" in next(d.text for d in docs if d.name == "chesterton-ball.txt")  # Latin-1 in the package
    splits = data.split_corpus(docs)
    assert all(sum(len(d.text) > 130_000 for d in splits[s]) >= 3 for s in data.SPLIT_NAMES)  # 32k+ tokens each


def test_a_mixed_corpus_gives_its_sources_turns():
    """documents_of_length takes the longest document of each source in turn, so a search on
    two documents of `mixed` reads one of code and one of prose."""
    import torch

    from longrope.data import TokenDoc, documents_of_length

    docs = [TokenDoc("p1", torch.arange(900), "prose"), TokenDoc("p2", torch.arange(800), "prose"),
            TokenDoc("c1", torch.arange(700), "code"), TokenDoc("c2", torch.arange(50), "code"),
            TokenDoc("c3", torch.arange(600), "code")]
    picked = documents_of_length(docs, 500, 3)
    assert [int(t[-1]) for t in picked] == [499] * 3
    order = documents_of_length(docs, 100)  # c2 is too short
    names = [next(d.name for d in docs if d.ids.data_ptr() == t.data_ptr()) for t in order]
    assert names == ["c1", "p1", "c3", "p2"]
