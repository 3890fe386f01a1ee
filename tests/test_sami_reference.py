"""Where the toolkit reproduces the reference (janphilippfranken/sami, /typo) exactly: the length-balanced
win rate, the HH per-subset negative constitutions, the research code's training loop (schedule spanning the
data, floor step count, last partial step scaled by the full accumulation, both paper-era quirks) and the
degenerate-judge check. Rows below are this project's own, not copied from the reference."""

from __future__ import annotations

import copy
import json
import random

import datasets
import pytest
import torch

from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
from cmikit.sami.constitutions import builtin_principles, constitution_set, subset_principle
from cmikit.sami.judge import degenerate_judge, judge_pairs, released_win_rates, win_rates
from cmikit.sami.loss import sami_loss
from cmikit.sami.sampling import build_items
from cmikit.sami.trainer import SAMIConfig, SAMIDataCollator, SAMITrainer, logprob_matrix


# ------------------------------------------------------------------------------------------- win rates
def test_length_balanced_rule_is_longer_vs_not_longer():
    # wins, candidate lengths, baseline lengths; two ties (lengths equal) that both lost.
    wins = [1, 1, 0, 1, 0, 0, 1]
    cand = [10, 12, 9, 5, 7, 7, 3]
    base = [5, 6, 9, 8, 7, 9, 4]
    out = win_rates(wins, cand, base)["length_balanced_win_rate"]
    longer = (1 + 1) / 2  # items 0, 1
    not_longer = (0 + 1 + 0 + 0 + 1) / 5  # items 2..6, ties included
    assert out["mean"] == pytest.approx((longer + not_longer) / 2)
    assert (out["n_longer"], out["n_not_longer"], out["n_ties"]) == (2, 5, 2)
    # The old rule (ties dropped) would give (1 + 2/3) / 2 = 0.833; the reference rule gives 0.7.
    assert out["mean"] == pytest.approx(0.7)


def test_released_judge_output_format(tmp_path):
    rows = [[1, 50, 80], [0, 60, 60], [1, 70, 40], [0.5, 30, 90], [1, 20, 20]]  # [win, len_base, len_test]
    path = tmp_path / "judged.json"
    path.write_text(json.dumps(rows))
    out = released_win_rates(path)
    assert out["win_rate"]["mean"] == pytest.approx(3.5 / 5)
    assert out["length_balanced_win_rate"]["mean"] == pytest.approx(((1 + 0.5) / 2 + (0 + 1 + 1) / 3) / 2)


def test_sami_judge_cli_on_released_judge_outputs(tmp_path):
    from cmikit.sami.cli import main

    path = tmp_path / "judged.json"
    path.write_text(json.dumps([[1, 50, 80], [0, 60, 60], [1, 70, 40], [1, 30, 90]]))
    assert main(["judge", "--judged", str(path), "--out_dir", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "win_rates.json").read_text())
    assert saved["length_balanced_win_rate"]["mean"] == pytest.approx((1.0 + 0.5) / 2)


class _AlwaysA:
    tokenizer = None

    def generate(self, prompts, sampling=None):
        return ["Final answer: A" for _ in prompts]


def _pairs(n):
    return [{"id": str(k), "query": f"q{k}", "constitution": "1. Be kind.", "candidate": "word " * (k + 1),
             "baseline": "word " * 3} for k in range(n)]


def test_degenerate_judge_is_reported(tmp_path, capsys):
    out = judge_pairs(_AlwaysA(), _pairs(6), tmp_path / "j", order="both", progress=False)
    assert out["valid"] is False and out["degenerate_judge"]["position"] == "A"
    assert out["degenerate_judge"]["share"] == 1.0
    assert "degenerate judge" in capsys.readouterr().err
    saved = json.loads((tmp_path / "j" / "win_rates.json").read_text())
    assert saved["valid"] is False
    # Shown in one position only, a constant answer is not detectable: no flag.
    out = judge_pairs(_AlwaysA(), _pairs(6), tmp_path / "k", order="candidate_first", progress=False)
    assert out["valid"] is True and out["degenerate_judge"] is None
    # A judge that follows the content is not flagged.
    mixed = [{"candidate_is_a": k % 2 == 0, "verdict": "A" if k % 3 else "B"} for k in range(20)]
    assert degenerate_judge(mixed) is None


def test_judge_records_token_lengths_under_a_named_tokenizer(tmp_path):
    tok = tiny_tokenizer()
    pairs = _pairs(3)
    out = judge_pairs(_AlwaysA(), pairs, tmp_path / "j", order="random", progress=False, length_tokenizer=tok,
                      length_unit="tokens:tiny")
    recs = [json.loads(ln) for ln in (tmp_path / "j" / "records.jsonl").read_text().splitlines()]
    for r, p in zip(sorted(recs, key=lambda r: r["id"]), pairs):
        assert r["len_candidate"] == len(tok(p["candidate"], add_special_tokens=False)["input_ids"])
        assert r["length_unit"] == "tokens:tiny"
    assert out["length_unit"] == "tokens:tiny"


# ----------------------------------------------------------------------------- HH negative constitutions
def test_hh_negatives_follow_the_reference_draw_per_subset():
    principles = builtin_principles("dialogue")
    assert subset_principle(principles, "helpful-base") == "helpful"
    assert subset_principle(principles, "harmless-base") == "harmless"
    assert subset_principle(principles, None) is None
    n = 2000
    queries = [{"id": f"{s}-{k}", "query": f"q {k}", "subset": s} for k in range(n)
               for s in ("helpful-base", "harmless-base")]
    items = build_items(queries, principles, None, 2, "random", seed=3)
    for subset, own, other in (("helpful-base", "helpful", "harmless"), ("harmless-base", "harmless", "helpful")):
        mine = [it for it in items if it["subset"] == subset]
        assert len(mine) == n
        # Positive: both principles, the subset's own listed last (reference CONSTITUTIONS[subset]).
        assert all(it["labels"][0] == f"+{other} +{own}" for it in mine)
        negs = [it["labels"][1] for it in mine]
        assert all(f"-{own}" in lab for lab in negs)  # the subset's own principle is always negated
        share_other = sum(f"-{other}" in lab for lab in negs) / n
        assert 0.46 < share_other < 0.54  # the other principle with probability 1/2 (sd 0.011)
    # Without a subset: a uniform draw among the three non-positive patterns.
    rng = random.Random(0)
    labels = [constitution_set(principles, 2, "random", rng)[1].label for _ in range(3000)]
    for lab in ("-helpful +harmless", "+helpful -harmless", "-helpful -harmless"):
        assert 0.29 < labels.count(lab) / 3000 < 0.38


# ------------------------------------------------------------------------ the research code's training loop
def _train_rows(n):
    words = ["sky", "sea", "tree", "rock", "bird", "fish", "sun", "moon", "rain", "snow"]
    return [{"prompts": [f"Be brief. Q: {words[k]}?\nA:", f"Be long. Q: {words[k]}?\nA:"],
             "responses": [f" {words[k]} is short", f" the {words[k]} is long and wide {k}"]} for k in range(n)]


def _reference_loop(model, rows, tok, lr, ga, max_steps):
    """The typo trainer's loop, re-written from its description: torch AdamW (default weight decay 0.01 on
    every parameter), linear schedule with one warm-up step over floor(len(loader) / GA) steps, zero_grad
    before every micro-batch, loss / GA, clip at 1.0, step when (step + 1) % GA == 0 or at the last row."""
    collate = SAMIDataCollator(tok, layout="padded")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    total = len(rows) // ga

    def factor(s):
        if s < 1:
            return s / 1
        return max(0.0, (total - s) / max(1, total - 1))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    snapshots = []
    for step, row in enumerate(rows):
        opt.zero_grad()
        batch = collate([row])
        matrix, _ = logprob_matrix(model, batch, "mean")
        (sami_loss(matrix).loss / ga).backward()
        if (step + 1) % ga == 0 or step + 1 == len(rows):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            snapshots.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
            if len(snapshots) == max_steps:
                break
    return snapshots


@pytest.mark.parametrize("n_rows", [7, 9])
def test_trainer_matches_the_reference_loop_step_by_step(tmp_path, n_rows):
    from transformers import TrainerCallback

    tok = tiny_tokenizer()
    rows = _train_rows(n_rows)
    base = tiny_causal_lm(seed=1)
    ref_model = copy.deepcopy(base)
    lr, ga = 3e-3, 3
    expected = _reference_loop(ref_model, rows, tok, lr, ga, max_steps=3)
    assert len(expected) == 3

    snaps = []

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            snaps.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

    args = SAMIConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1,
                      gradient_accumulation_steps=ga, max_steps=3, learning_rate=lr, use_cpu=True,
                      disable_tqdm=True, seed=0, optim="adamw_torch", layout="padded",
                      lr_zero_first_step=True, last_microbatch_gradient_only=True, schedule="reference",
                      weight_decay=0.01, weight_decay_params="all", train_sampling_strategy="sequential",
                      report_to="none")
    model = copy.deepcopy(base)
    trainer = SAMITrainer(model, args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                          callbacks=[Snap()])
    trainer.train()
    assert trainer.reference_schedule_steps() == n_rows // ga
    assert len(snaps) == 3
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    for k, (mine, ref) in enumerate(zip(snaps, expected)):
        assert (mine - ref).abs().max().item() <= 1e-6, f"step {k + 1}"
    # The steps really did something (not a comparison of unchanged weights): step 1 has lr 0, step 2 moves.
    assert (expected[0] - start).abs().max() == 0
    assert (expected[1] - expected[0]).abs().max() > 1e-4
    # 7 rows: the schedule spans floor(7/3) = 2 steps, so the 3rd (partial) step has lr 0; 9 rows: lr 1/2.
    moved3 = (expected[2] - expected[1]).abs().max().item()
    assert (moved3 == 0) == (n_rows == 7)


def test_schedule_steps_differs_from_reference(tmp_path):
    # The default schedule spans max_steps: with 7 rows, GA 3 and max_steps 3 its 3rd step still moves.
    tok = tiny_tokenizer()
    rows = _train_rows(7)
    args = SAMIConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=1, gradient_accumulation_steps=3,
                      max_steps=3, learning_rate=1e-3, use_cpu=True, disable_tqdm=True, optim="adamw_torch",
                      lr_scheduler_type="linear", warmup_steps=1, train_sampling_strategy="sequential",
                      report_to="none")
    trainer = SAMITrainer(tiny_causal_lm(seed=1), args, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tok)
    trainer.train()
    assert trainer.lr_scheduler.lr_lambdas[0](2) > 0  # schedule over 3 steps, not floor(7/3) = 2
