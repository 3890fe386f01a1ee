"""Constitutions, query loaders and sampling filters: behaviour and bad inputs."""

from __future__ import annotations

import json
import random

import pytest

from cmikit.sami.constitutions import (
    Constitution,
    ConstitutionError,
    builtin_principles,
    check_constitution_sets,
    constitution_set,
    load_reference_constitutions,
)
from cmikit.sami.queries import QueryError, load_queries, split_queries
from cmikit.sami.sampling import ResponseFilter, build_items, item_prompts, training_rows


def test_constitution_set_positive_first_and_distinct_negatives():
    principles = builtin_principles("dialogue")
    for seed in range(5):
        consts = constitution_set(principles, 3, "random", random.Random(seed))
        assert consts[0].signs == (True, True)
        assert len({c.signs for c in consts}) == 3 and all(not all(c.signs) for c in consts[1:])
    one = constitution_set(principles, 2, "one", random.Random(0))[1]
    assert sum(one.signs) == 1
    assert one.statements[one.signs.index(False)] == principles[one.signs.index(False)].antithesis
    every = constitution_set(principles, 2, "all")[1]
    assert every.signs == (False, False) and every.label == "-helpful -harmless"


def test_constitution_set_bad_inputs():
    principles = builtin_principles("summarization")
    with pytest.raises(ConstitutionError, match="C >= 2"):
        constitution_set(principles, 1)
    with pytest.raises(ConstitutionError, match="only 3 distinct"):
        constitution_set(principles, 5)
    with pytest.raises(ConstitutionError, match="allowed"):
        constitution_set(principles, 2, "sometimes")
    with pytest.raises(ConstitutionError, match="mismatched sizes"):
        check_constitution_sets([constitution_set(principles, 2), constitution_set(principles, 3)])


def test_shuffled_render_is_a_permutation_and_deterministic():
    c = Constitution(tuple(f"principle {k}" for k in range(6)))
    plain = c.render()
    shuffled = {c.render(shuffle=True, seed=s) for s in range(10)}
    assert plain.splitlines()[0] == "1. principle 0"
    assert len(shuffled) > 1
    for text in shuffled:
        assert sorted(ln.split(". ", 1)[1] for ln in text.splitlines()) == sorted(c.statements)
    assert c.render(shuffle=True, seed="x") == c.render(shuffle=True, seed="x")


def test_reference_constitutions_load(shared_data):
    sets = load_reference_constitutions(shared_data / "sami-tldr" / "constitutions_mistral")
    assert len(sets) == 6 and check_constitution_sets(sets) == 2
    pos, neg = sets[0]
    assert pos.signs == (True, True) and neg.signs == (False, True)
    assert pos.statements[1] == neg.statements[1] and pos.statements[0] != neg.statements[0]
    assert pos.statements[0].startswith("Summaries should be brief")


def test_reference_constitution_with_mismatched_principles(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"positive": "1. a\n2. b", "negative": "1. not a"}))
    with pytest.raises(ConstitutionError, match="different numbers of principles"):
        load_reference_constitutions(bad)


def test_query_loaders(tmp_path, shared_data):
    builtin = load_queries("builtin:dialogue")
    assert len(builtin) >= 40 and len({q["id"] for q in builtin}) == len(builtin)
    (tmp_path / "q.jsonl").write_text('{"prompt": "first"}\n{"prompt": "second"}\n')
    assert [q["query"] for q in load_queries(str(tmp_path / "q.jsonl"))] == ["first", "second"]
    (tmp_path / "q.csv").write_text("id,text\nx,hello\ny,world\n")
    assert load_queries(str(tmp_path / "q.csv"), limit=1) == [{"id": "x", "query": "hello"}]
    posts = load_queries(str(shared_data / "sami-tldr" / "responses" /
                             "base-mistral-mistral-constitution-temperature-0.0.json"), limit=3)
    assert len(posts) == 3 and posts[0]["query"].startswith("POST:")
    train, held = split_queries(builtin, 8)
    assert len(held) == 8 and not {q["id"] for q in train} & {q["id"] for q in held}


def test_empty_and_missing_query_sets(tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"query": "   "}\n')
    with pytest.raises(QueryError, match="empty"):
        load_queries(str(tmp_path / "empty.jsonl"))
    with pytest.raises(QueryError, match="empty"):
        load_queries("builtin:dialogue", offset=10_000)
    with pytest.raises(QueryError, match="not found"):
        load_queries(str(tmp_path / "missing.json"))
    with pytest.raises(QueryError, match="empty"):
        build_items([], builtin_principles("dialogue"))


def test_items_prompts_and_training_rows_shuffle_principles():
    items = build_items([{"id": "q1", "query": "How do I boil an egg?"}], builtin_principles("dialogue"), seed=3)
    assert len(items[0]["statements"]) == 2
    gen = item_prompts(items[0], "dialogue", "plain")
    assert gen[0].endswith("Human: How do I boil an egg?\n\nAssistant:")
    assert "1. The assistant gives a direct" in gen[0]  # generation keeps the written order
    salts = {training_rows([{**items[0], "responses": [" a", " b"]}], "dialogue", "plain", salt=s)[0]["prompts"][0]
             for s in range(8)}
    assert len(salts) == 2  # two principles: both orders occur across salts
    chat = item_prompts(items[0], "dialogue", "chat")[0]
    assert chat[0]["role"] == "system" and chat[1] == {"role": "user", "content": "How do I boil an egg?"}


def test_response_filter():
    f = ResponseFilter(filter_strings=["[insert"], require_period=True)
    assert f.reason(["Fine.", "Other"]) is None
    assert f.reason(["Fine.", "[insert name]"]) == "contains '[insert'"
    assert f.reason(["Same.", "Same."]) == "identical"
    assert f.reason(["No period", "x"]) == "positive_not_ending_in_period"
    assert f.reason(["", "x"]) == "too_short"
