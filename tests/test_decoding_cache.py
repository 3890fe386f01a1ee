"""KV caching (Fast-dLLM prefix / dual cache) in the one decoding loop, and reference numerics."""

from __future__ import annotations

import pytest
import torch

from cmikit.decoding import DiffusionGenerationConfig, adapt, generate
from cmikit.harness.errors import ConfigError, ModelRefError
from cmikit.harness.testing import left_pad, tiny_dream_like, tiny_llada_like

STRATEGIES = ["low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "threshold", "entropy_bound",
              "ccd", "ccd_marginal"]
PROMPTS = [[5, 9, 17, 23, 4, 8], [11, 3], [40, 41, 42, 43]]




def peaked(model):
    with torch.no_grad():  # peaked predictions: float noise of a different summation order cannot reorder them
        model.lm_head.weight.mul_(40)
        model.lm_head.weight[model.config.mask_token_id] = 0  # never predict [MASK] itself (logit 0 < the max)
    return model


@pytest.fixture(scope="module")
def one_layer():
    """A one-layer bidirectional model: every position's keys/values are a function of its own token and
    position only, so its outputs do not depend on what the cache left stale outside the block (the prefix's
    and the masked suffix's tokens do not change while a block is decoded): the cache is exact."""
    return peaked(tiny_llada_like(num_hidden_layers=1, seed=3))


@pytest.fixture(scope="module")
def two_layer():
    return peaked(tiny_llada_like(num_hidden_layers=2, seed=4))


def config(strategy: str, **kw) -> DiffusionGenerationConfig:
    base = dict(gen_length=12, block_length=4, steps=12, strategy=strategy, threshold=0.05, entropy_bound=2.0,
                ccd_entropy_threshold=3.5, warmup_steps=2, temperature=0.0, seed=0)
    base.update(kw)
    return DiffusionGenerationConfig(**base)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cache_is_exact_when_outputs_ignore_stale_positions(one_layer, strategy, cache):
    ids, mask = left_pad(PROMPTS)
    plain = generate(one_layer, ids, config(strategy), attention_mask=mask)
    cached = generate(one_layer, ids, config(strategy, cache=cache), attention_mask=mask)
    assert cached.sequences.tolist() == plain.sequences.tolist()
    assert cached.nfe == plain.nfe and cached.nfe_per_row.tolist() == plain.nfe_per_row.tolist()
    assert cached.model_tokens <= plain.model_tokens


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_exact_for_shifted_logits_sampling_and_guidance(cache):
    dream = peaked(tiny_dream_like(num_hidden_layers=1, seed=5))
    ids, mask = left_pad(PROMPTS)
    for kw in ({"strategy": "entropy"}, {"strategy": "ccd"}, {"strategy": "low_confidence", "temperature": 1.0},
               {"strategy": "low_confidence", "cfg_scale": 1.5}):
        plain = generate(dream, ids, config(**kw), attention_mask=mask)
        cached = generate(dream, ids, config(**kw, cache=cache), attention_mask=mask)
        assert cached.sequences.tolist() == plain.sequences.tolist(), kw


def test_refresh_every_step_equals_no_cache_on_a_deep_model(two_layer):
    ids, mask = left_pad(PROMPTS)
    for strategy in ("low_confidence", "ccd", "threshold"):
        plain = generate(two_layer, ids, config(strategy), attention_mask=mask)
        for cache in ("prefix", "dual"):
            out = generate(two_layer, ids, config(strategy, cache=cache, cache_refresh=1), attention_mask=mask)
            assert out.sequences.tolist() == plain.sequences.tolist()


def test_tokens_run_through_the_model_are_counted(two_layer):
    prompt = torch.tensor([[5, 9, 17, 23]])
    total = 4 + 12
    plain = generate(two_layer, prompt, config("low_confidence"))
    assert plain.tokens_per_row.tolist() == [12 * total] and plain.model_tokens == 12 * total
    # Fast-dLLM's fixed policy by name (the default "surprisal" policy refreshes where commits carry information).
    prefix = generate(two_layer, prompt, config("low_confidence", cache="prefix", cache_policy="block"))
    # 3 blocks of 4 steps: one full pass, then 3 passes over block + suffix (12, 8, 4 positions).
    assert prefix.nfe == 12
    assert prefix.tokens_per_row.tolist() == [3 * total + 3 * (12 + 8 + 4)]
    dual = generate(two_layer, prompt, config("low_confidence", cache="dual", cache_policy="block"))
    assert dual.tokens_per_row.tolist() == [3 * total + 9 * 4] and dual.refreshes == 3
    refreshed = generate(two_layer, prompt, config("low_confidence", cache="dual", cache_refresh=2))
    assert refreshed.tokens_per_row.tolist() == [6 * total + 6 * 4] and refreshed.refreshes == 6
    guided = generate(two_layer, prompt, config("low_confidence", cache="dual", cache_policy="block", cfg_scale=1.0))
    assert guided.tokens_per_row.tolist() == [2 * (3 * total + 9 * 4)]
    adaptive = generate(two_layer, prompt, config("low_confidence", cache="dual", cache_refresh_scope="canvas"))
    n = adaptive.refreshes
    assert adaptive.tokens_per_row.tolist() == [n * total + (12 - n) * 4] and 3 <= n <= 12
    # A left refresh runs everything left of the block's end: refreshing at every step, after the first full pass,
    # block 0 runs 3 x 8 positions, block 1 4 x 12, block 2 4 x 16.
    left = generate(two_layer, prompt, config("low_confidence", cache="dual", cache_surprisal=0.0))
    assert left.refreshes == 12 and left.tokens_per_row.tolist() == [total + 3 * 8 + 4 * 12 + 4 * 16]
    # Under the default policy the count lies between the window-only and the every-step runs.
    default = generate(two_layer, prompt, config("low_confidence", cache="dual"))
    assert dual.tokens_per_row[0] - 3 * total + 4 <= default.tokens_per_row[0] <= left.tokens_per_row[0]


def test_batched_cache_equals_each_prompt_alone(two_layer):
    ids, mask = left_pad(PROMPTS)
    for cache in ("prefix", "dual"):
        cfg = config("ccd", cache=cache)
        batched = generate(two_layer, ids, cfg, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            alone = generate(two_layer, torch.tensor([prompt]), cfg)
            assert batched.generated[row].tolist() == alone.generated[0].tolist()


def test_cache_refusals(two_layer):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32)).eval()
    with pytest.raises(ConfigError, match="cache='prefix'.*no KV cache"):
        generate(adapt(bert, mask_token_id=31), torch.tensor([[1, 2]]), config("low_confidence", cache="prefix"))
    with pytest.raises(ConfigError, match="hook"):
        generate(two_layer, torch.tensor([[1, 2]]), config("low_confidence", cache="dual"),
                 logits_hook=lambda step, x, logits: None)
    fake_llada = adapt(two_layer)
    fake_llada.kind = "llada"
    with pytest.raises(ModelRefError, match="llada remote-code checkpoint cannot reuse"):
        generate(fake_llada, torch.tensor([[1, 2]]), config("low_confidence", cache="dual"))
    with pytest.raises(ConfigError, match="cache="):
        DiffusionGenerationConfig(cache="full")
    with pytest.raises(ConfigError, match="cache_refresh"):
        DiffusionGenerationConfig(cache="dual", cache_refresh=0)


def test_tiny_dlm_cached_outputs_agree_with_no_cache():
    """On the trained tiny DLM (blocks of 8, 256 held-out prompts), prefix and dual cache agree with no cache on
    >= 95% of prompts (where they differ, both copy one of the two strings: accuracy does not move)."""
    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    model, tokenizer, task = load_tiny_dlm(train_if_missing=False, progress=False)
    problems = task.problems(256, seed=12345)
    prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
    for strategy in ("low_confidence", "threshold", "ccd"):
        cfg = DiffusionGenerationConfig(gen_length=task.gen_length, block_length=8, strategy=strategy)
        plain = generate(model, prompts, cfg).generated
        for cache in ("prefix", "dual"):
            cached = generate(model, prompts, cfg.update(cache=cache)).generated
            agree = (cached == plain).all(-1).float().mean().item()
            assert agree >= 0.95, (strategy, cache, agree)


def test_bench_cache_report_has_every_mode_and_the_speedups(monkeypatch):
    """The ``"cache"`` object of bench.json, on a tiny random model standing in for SmolLM2 (timing only), and the
    accuracy part on every tiny task (a few problems) with NFE, positions run and accuracy in every row."""
    import cmikit.decoding.bench_cache as bench_cache
    import cmikit.harness.models
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    monkeypatch.setattr(cmikit.harness.models, "load_model", lambda ref, **kw: (tiny_causal_lm(), tiny_tokenizer()))
    accuracy = bench_cache.cache_accuracy
    monkeypatch.setattr(bench_cache, "cache_accuracy", lambda *a, **kw: accuracy(
        *a, **{**kw, "n_problems": 4, "strategies": ("threshold",)}))
    monkeypatch.setattr(bench_cache, "one_token_per_step_baseline",
                        lambda *a, **kw: {"task": "one-class-upper", "accuracy": 0.0, "model_tokens": 8256.0})
    named = {"task": "one-class-upper", "config": dict(bench_cache.BEST_COMBINATION), "accuracy": 1.0,
             "model_tokens": 50.0}  # fewer positions than any real row: the named row wins
    monkeypatch.setattr(bench_cache, "best_combination_run", lambda *a, **kw: named)
    report = bench_cache.cache_report(quick=True, progress=False)
    for arm in bench_cache.SPEED_ARMS:
        row = report[arm]
        for key in ("tokens_per_second", "seconds", "mean_nfe", "model_tokens", "speedup"):
            assert key in row, (arm, key)
        assert row["mean_nfe"] == report["speed_setting"]["gen_length"]  # one token per step, every arm
    assert report["none"]["speedup"] == 1.0 and report["none"]["refreshes"] == 0
    assert report["none"]["model_tokens"] > report["prefix/block"]["model_tokens"] > \
        report["dual/block"]["model_tokens"]
    tasks = report["accuracy_by_task"]
    assert set(tasks) == {"copy-one-of-two", "one-class-upper", "copy-one-of-two (block diffusion)"}
    for by_task in tasks.values():
        for arm, by_strategy in by_task["arms"].items():
            row = by_strategy["threshold"]
            assert {"accuracy", "mean_nfe", "model_tokens", "positions_reduction"} <= set(row), arm
            assert row["model_tokens"] <= by_task["arms"]["none"]["threshold"]["model_tokens"], arm
    bd = tasks["copy-one-of-two (block diffusion)"]["arms"]["dual"]["threshold"]
    assert bd["agreement_with_none"] == 1.0  # the exact cache
    assert report["targets"]["applies"] is False and "best_combination" in report["targets"]
    assert report["targets"]["named_best_combination"] == named  # the named row is one of the candidates
    assert report["targets"]["best_combination"]["arm"] == "best" and report["targets"]["best_met"]
    assert report["load_average"]["before"] is not None


def test_cli_generate_with_dual_cache_and_reference_numerics(capsys):
    import json

    from cmikit.decoding.cli import main

    prompt = "abcdefghabcdefghabcdefgh,abcdefghAbcdefghabcdefGh="
    code = main(["generate", "--model", "tiny", "--prompt", prompt, "--gen-length", "24", "--block-length", "8",
                 "--cache", "dual", "--numerics", "reference", "--strategy", "ccd"])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["completion"] in (prompt[:24], prompt[25:49])  # one of the two strings, exactly
    assert 3 <= row["nfe"] <= 24
