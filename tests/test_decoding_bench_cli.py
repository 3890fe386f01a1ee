"""The benchmark's bookkeeping, the tiny task and the CLI entry points (no training, no network)."""

from __future__ import annotations

import random

import pytest
import torch

from cmikit.decoding.bench import (
    BASELINE,
    budget_grid,
    ccd_target,
    evaluate_setting,
    plot,
    spare_special_token_id,
)
from cmikit.decoding.cli import main, parse_bench, parse_generate
from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.tiny_task import CopyOneTask
from cmikit.harness.testing import tiny_tokenizer


def test_copy_task_is_exact_and_heldout_is_disjoint():
    task = CopyOneTask(length=8, n_diff=3, gen_length=10)
    prompt, answer = task.sample(random.Random(0))
    x, y = prompt.rstrip("=").split(",")
    assert answer in (x, y) and sum(a != b for a, b in zip(x, y)) == 3 and x.islower() and y.lower() == x
    assert task.is_correct(prompt, x + "<eos><eos>") and task.is_correct(prompt, y + "<eos><eos>")
    chimera = "".join(a if i % 2 else b for i, (a, b) in enumerate(zip(x, y)))
    assert chimera in (x, y) or not task.is_correct(prompt, chimera + "<eos><eos>")
    assert not task.is_correct(prompt, x[:-1] + "<eos><eos><eos>")
    held = task.problems(20, seed=1)
    train = task.problems(20, seed=2, exclude={p for p, _ in held})
    assert not {p for p, _ in held} & {p for p, _ in train}


def test_grid_and_target_summary(tmp_path):
    grid = budget_grid(24, quick=False)
    assert (BASELINE[0], BASELINE[1]) in {(s, label) for s, label, _ in grid}
    for strategy, _, fields in grid:
        DiffusionGenerationConfig(gen_length=24, strategy=strategy, **fields)  # every setting validates
    results = [
        {"strategy": "low_confidence", "setting": "steps=N", "accuracy": 0.9, "mean_nfe": 24.0},
        {"strategy": "ccd", "setting": "DS expand_ratio=4", "accuracy": 0.92, "mean_nfe": 7.5},
        {"strategy": "ccd_marginal", "setting": "DS eps=0.1", "accuracy": 0.8, "mean_nfe": 5.0},
    ]
    target = ccd_target(results, 24)
    assert target["ccd"]["meets_3x"] and target["ccd"]["best_at_equal_or_better_accuracy"]["nfe_reduction"] == 3.2
    assert not target["ccd_marginal"]["meets_3x"]
    plot(results, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_evaluate_setting_on_an_untrained_model():
    from cmikit.decoding.tiny_dlm import TinyDLMTrainConfig, build_model

    cfg = TinyDLMTrainConfig(length=6, n_diff=2, gen_length=8, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32)
    tok = tiny_tokenizer()
    torch.manual_seed(0)  # random weights: the same model on every run
    model = build_model(cfg, tok).eval()
    task = cfg.task()
    row = evaluate_setting(model, tok, task, task.problems(6, seed=0), DiffusionGenerationConfig(gen_length=8), 4)
    assert row["n"] == 6 and row["mean_nfe"] == 8 and 0 <= row["accuracy"] <= 1


def test_spare_special_token_comes_from_the_tokenizer():
    tok = tiny_tokenizer()
    assert spare_special_token_id(tok) == tok.mask_token_id


def test_cli_help_and_parser(capsys):
    assert main(["--help"]) == 0 and "generate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0 and "--gen-length" in capsys.readouterr().out
    opts, config = parse_generate(["--model", "some/model", "--prompt", "1+1=", "--strategy", "ccd", "--seek-mode",
                                   "false", "--ccd-entropy-threshold", "none"])
    assert config.strategy == "ccd" and config.seek_mode is False and config.ccd_entropy_threshold is None
    assert parse_bench(["--quick"])[0].quick


def test_cli_generate_with_a_checkpoint_folder(tmp_path, capsys):
    from cmikit.decoding.tiny_dlm import TinyDLMTrainConfig, build_model

    cfg = TinyDLMTrainConfig(length=3, n_diff=1, gen_length=4, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32)
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    build_model(cfg, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    main(["generate", "--model", str(tmp_path), "--prompt", "abc,abd=", "--gen-length", "4", "--strategy", "threshold"])
    assert '"nfe"' in capsys.readouterr().out


def test_one_class_upper_task_is_exact_and_punishes_the_majority_vote():
    from cmikit.decoding.tiny_task import OneClassUpperTask, task_from_dict, task_name

    task = OneClassUpperTask(length=32, gen_length=34)
    prompt, answer = task.sample(random.Random(3))
    x = prompt.rstrip("=")
    assert x.islower() and len(x) == 32 and answer.lower() == x
    upper = {c for c in answer if c.isupper()}
    assert len(upper) <= 1 and upper <= set(task.choice.upper())
    assert task.is_correct(prompt, answer + "<eos>")
    for c in task.choice:
        assert task.is_correct(prompt, x.replace(c, c.upper()))
    # The per-position majority (every choice letter lower-case) is never an answer when all letters occur.
    if set(task.choice) <= set(x):
        assert not task.is_correct(prompt, x)
    # Two letters upper-cased, or one letter half upper-cased: wrong.
    assert not task.is_correct(prompt, x.replace("a", "A").replace("b", "B")) or not {"a", "b"} <= set(x)
    i = x.index(answer[[c.isupper() for c in answer].index(True)].lower()) if upper else None
    if i is not None and answer.count(answer[i]) > 1:
        assert not task.is_correct(prompt, answer[:i] + answer[i].lower() + answer[i + 1:])
    assert task_from_dict({"name": task_name(task), **vars(task)}) == task
    assert task_from_dict({"length": 4, "n_diff": 1, "alphabet": "ab", "gen_length": 4}).n_diff == 1
    held = task.problems(10, seed=1)
    assert not {p for p, _ in held} & {p for p, _ in task.problems(10, seed=2, exclude={p for p, _ in held})}


def test_dependency_grid_validates_and_targets_cover_threshold_and_eb():
    from cmikit.decoding.bench import dependency_grid

    for quick in (True, False):
        grid = dependency_grid(64, quick)
        assert (BASELINE[0], BASELINE[1]) in {(s, label) for s, label, _ in grid}
        for strategy, _, fields in grid:
            DiffusionGenerationConfig(gen_length=64, strategy=strategy, **fields)
    from cmikit.decoding.config import STRATEGIES

    assert {s for s, _, _ in dependency_grid(64, False)} == set(STRATEGIES)
    results = [
        {"strategy": "low_confidence", "setting": "steps=N", "accuracy": 0.9, "mean_nfe": 64.0},
        {"strategy": "threshold", "setting": "tau=0.7", "accuracy": 0.1, "mean_nfe": 3.0},
        {"strategy": "threshold", "setting": "tau=0.9", "accuracy": 0.95, "mean_nfe": 8.0},
    ]
    others = ccd_target(results, 64)["others_at_equal_or_better_accuracy"]
    assert others["threshold"]["setting"] == "tau=0.9" and others["threshold"]["nfe_reduction"] == 8.0
    assert others["entropy_bound"] is None


def test_train_config_per_task_builds_a_model_with_the_task_stored():
    from cmikit.decoding.tiny_dlm import build_model, train_config_for
    from cmikit.decoding.tiny_task import OneClassUpperTask, task_from_dict

    cfg = train_config_for("one-class-upper", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = build_model(cfg, tiny_tokenizer())
    assert isinstance(task_from_dict(model.config.tiny_dlm_task), OneClassUpperTask)
    assert model.config.max_position_embeddings >= 65 + 64


def test_shipped_one_class_upper_model_punishes_committing_coupled_positions_together():
    from cmikit.decoding import generate
    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    torch.set_num_threads(1)
    model, tok, task = load_tiny_dlm(task="one-class-upper", train_if_missing=False, progress=False)
    assert task.gen_length == 64 and sum(p.numel() for p in model.parameters()) * 4 <= 2 * 2**20
    problems = task.problems(8, seed=12345)
    prompts, _ = encode_problems(problems, tok, task.gen_length)

    def decoded(**fields):
        out = generate(model, prompts, DiffusionGenerationConfig(gen_length=64, **fields))
        return ["".join(tok.convert_ids_to_tokens(row.tolist())) for row in out.generated], out

    texts, out = decoded(strategy="threshold", threshold=0.99)
    assert sum(task.is_correct(p, t) for (p, _), t in zip(problems, texts)) >= 7 and out.nfe < 16
    # tau = 0.6 commits every choice position (lower-case marginal ~0.75) in the first pass: never an answer.
    texts, out = decoded(strategy="threshold", threshold=0.6)
    assert out.nfe == 1 and not any(task.is_correct(p, t) for (p, _), t in zip(problems, texts))
    assert all(t == p.rstrip("=") for (p, _), t in zip(problems, texts))  # the all-lower-case chimera
