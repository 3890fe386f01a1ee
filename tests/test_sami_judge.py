"""Judge: verdict parsing, raw and length-balanced win rates by hand, and the pipeline on real response pairs."""

from __future__ import annotations

import json

import pytest
import torch

from cmikit.sami.judge import (
    JudgeError,
    judge_pairs,
    pairs_from_files,
    parse_verdict,
    verdict_score,
    win_rates,
)

RESPONSES = "sami-tldr/responses"
SAMI_FILE = "iteration-3-epoch-0.38-from-epoch-0.25-mistral-mistral-constitution-temperature-0.0.json"
BASE_FILE = "base-mistral-mistral-constitution-temperature-0.0.json"


@pytest.mark.parametrize("text, verdict", [
    ("Summary A is shorter.\nFinal answer: A", "A"),
    ("B covers more.\nfinal ANSWER:  B.", "B"),
    ("Final answer: A\nWait, actually... Final answer: B", "B"),
    ("Both are fine.\nFinal answer: A or B", None),
    ("Final answer: neither", None),
    ("I prefer the first.\nA", "A"),
    ("Comparison...\nResponse B", "B"),
    ("I cannot decide between them.", None),
    ("Final Response: B", "B"),
    ("", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_verdict_scores():
    assert verdict_score("A", True) == 1.0 and verdict_score("A", False) == 0.0
    assert verdict_score("B", False) == 1.0 and verdict_score(None, True) == 0.5


def test_win_rates_raw_and_length_balanced_by_hand():
    wins = [1, 1, 1, 0, 0.5, 0, 1, 0]
    len_c = [10, 12, 30, 9, 5, 5, 7, 6]
    len_b = [5, 5, 5, 5, 9, 9, 9, 6]  # longer: items 0-3; not longer: 4-7 (item 7 is a tie)
    out = win_rates(wins, len_c, len_b)
    assert out["win_rate"]["mean"] == pytest.approx(4.5 / 8)
    longer, not_longer = 3 / 4, 1.5 / 4  # ties count with "not longer", as the reference
    lb = out["length_balanced_win_rate"]
    assert lb["mean"] == pytest.approx((longer + not_longer) / 2)
    assert lb["win_rate_when_longer"] == pytest.approx(longer)
    assert lb["win_rate_when_not_longer"] == pytest.approx(not_longer)
    assert lb["n_longer"] == 4 and lb["n_not_longer"] == 4 and lb["n_ties"] == 1
    assert out["win_rate"]["ci_low"] <= out["win_rate"]["mean"] <= out["win_rate"]["ci_high"]
    with pytest.raises(JudgeError):
        win_rates([], [], [])


class _ScriptedJudge:
    """A judge backend that answers from a script (records prompts it saw)."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.prompts = []

    def generate(self, prompts, sampling=None):
        self.prompts += prompts
        return [self.outputs(p) for p in prompts]


def test_judge_that_never_names_a_or_b_scores_half(tmp_path, shared_data):
    pairs = pairs_from_files(shared_data / RESPONSES / SAMI_FILE, shared_data / RESPONSES / BASE_FILE, limit=6)
    judge = _ScriptedJudge(lambda p: "Both summaries have merits; I cannot choose.")
    out = judge_pairs(judge, pairs, tmp_path / "j", mode="generate", order="random", progress=False)
    assert out["win_rate"]["mean"] == 0.5 and out["n_unparsed_verdicts"] == 6


def test_judge_pipeline_on_real_pairs_with_position_handling(tmp_path, shared_data):
    pairs = pairs_from_files(shared_data / RESPONSES / SAMI_FILE, shared_data / RESPONSES / BASE_FILE, limit=10)
    assert pairs[0]["query"].startswith("POST:") and pairs[0]["candidate"] != pairs[0]["baseline"]

    # A judge that always prefers the shorter summary: the candidate wins exactly where it is shorter,
    # whichever position it is shown in.
    def shorter(prompt):
        text = prompt[0]["content"]
        a = text.split("Summary A:\n")[1].split("\n\nSummary B:")[0]
        b = text.split("Summary B:\n")[1].split("\n\nFirst compare")[0]
        return "Final answer: " + ("A" if len(a.split()) < len(b.split()) else "B")

    for order in ("random", "both"):
        out = judge_pairs(_ScriptedJudge(shorter), pairs, tmp_path / order, mode="generate", order=order,
                          progress=False)
        expected = sum(len(p["candidate"].split()) < len(p["baseline"].split()) for p in pairs) / len(pairs)
        assert out["win_rate"]["mean"] == pytest.approx(expected)
        assert out["length_balanced_win_rate"]["win_rate_when_longer"] in (0.0, None)
    records = [json.loads(ln) for ln in (tmp_path / "both" / "records.jsonl").read_text().splitlines()]
    assert all(len(r["judgements"]) == 2 for r in records)
    positions = [r["judgements"][0]["candidate_is_a"] for r in
                 map(json.loads, (tmp_path / "random" / "records.jsonl").read_text().splitlines())]
    assert 0 < sum(positions) < len(positions)  # randomised positions, both occur


@pytest.mark.embedded
def test_logprob_judge_on_real_pairs_with_embedded_model(tmp_path, shared_data, embedded_backend):
    pairs = pairs_from_files(shared_data / RESPONSES / SAMI_FILE, shared_data / RESPONSES / BASE_FILE, limit=2)
    for p in pairs:  # keep the posts short: this test checks plumbing on a real model, not quality
        p["query"] = p["query"][:300]
    out = judge_pairs(embedded_backend, pairs, tmp_path / "lp", mode="logprob", order="both", progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / "lp" / "records.jsonl").read_text().splitlines()]
    lp = json.loads(recs[0]["judgements"][0]["output"])
    assert torch.logsumexp(torch.tensor([lp["logp_A"], lp["logp_B"]]), 0).item() == pytest.approx(0.0, abs=1e-4)
    assert out["win_rate"]["n"] == 2 and out["n_unparsed_verdicts"] == 0
    # The soft rate is the mean probability, over both orders, that the candidate is the better one.
    p_cand = [j["p_candidate"] for r in recs for j in r["judgements"]]
    assert len(p_cand) == 4 and out["soft_win_rate"]["mean"] == pytest.approx(sum(p_cand) / 4, abs=1e-6)
