"""Refresh policies of the approximate KV cache (cmikit.decoding.cache_policy) and the loop's small guards."""

from __future__ import annotations

import pytest
import torch

from cmikit.decoding import DiffusionGenerationConfig, generate
from cmikit.decoding.cache_policy import SurprisalRefresh, make_refresh_policy
from cmikit.harness.errors import ConfigError
from cmikit.harness.testing import left_pad, tiny_llada_like

PROMPTS = [[5, 9, 17, 23, 4, 8], [11, 3], [40, 41, 42, 43]]




@pytest.fixture(scope="module")
def deep():
    model = tiny_llada_like(num_hidden_layers=2, seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
        model.lm_head.weight[model.config.mask_token_id] = 0
    return model


def config(strategy: str, **kw) -> DiffusionGenerationConfig:
    base = dict(gen_length=12, block_length=4, steps=12, strategy=strategy, threshold=0.05, entropy_bound=2.0,
                ccd_entropy_threshold=3.5, warmup_steps=2, temperature=0.0, seed=0)
    base.update(kw)
    return DiffusionGenerationConfig(**base)


@pytest.mark.parametrize("policy,fields", [("surprisal", {"cache_surprisal": 0.0, "cache_refresh_scope": "canvas"}),
                                           ("interval", {"cache_refresh": 1}), ("block", {"cache_refresh": 1})])
def test_every_policy_refreshing_every_step_is_bit_equal_to_no_cache(deep, policy, fields):
    ids, mask = left_pad(PROMPTS)
    for strategy in ("low_confidence", "threshold", "ccd", "ccd_marginal"):
        plain = generate(deep, ids, config(strategy), attention_mask=mask)
        for cache in ("prefix", "dual"):
            out = generate(deep, ids, config(strategy, cache=cache, cache_policy=policy, **fields),
                           attention_mask=mask)
            assert out.sequences.tolist() == plain.sequences.tolist(), (strategy, cache)
            assert out.nfe == plain.nfe and out.refreshes == plain.nfe
            assert out.model_tokens == plain.model_tokens


def test_surprisal_policy_sits_between_block_and_every_step(deep):
    ids, mask = left_pad(PROMPTS)
    runs = {}
    for name, fields in {"block": {"cache_policy": "block"}, "huge": {"cache_surprisal": 1e9},
                         "default": {}, "zero": {"cache_surprisal": 0.0}}.items():
        runs[name] = generate(deep, ids, config("low_confidence", cache="dual", **fields), attention_mask=mask)
    # An unreachable budget refreshes once (the first pass); later blocks start with a window shift.
    assert runs["huge"].refreshes == 1 and runs["huge"].model_tokens < runs["block"].model_tokens
    assert 1 <= runs["default"].refreshes <= runs["zero"].refreshes == 12
    assert runs["huge"].model_tokens <= runs["default"].model_tokens <= runs["zero"].model_tokens


def test_window_shift_is_exact_where_keys_depend_on_their_own_token_only():
    """One layer: a position's keys/values depend on its token and position only, so the finished block's
    keys/values frozen by a window shift are exact and the cache never refreshing equals no cache."""
    model = tiny_llada_like(num_hidden_layers=1, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
        model.lm_head.weight[model.config.mask_token_id] = 0
    ids, mask = left_pad(PROMPTS)
    for strategy in ("low_confidence", "ccd"):
        plain = generate(model, ids, config(strategy), attention_mask=mask)
        for cache in ("prefix", "dual"):
            out = generate(model, ids, config(strategy, cache=cache, cache_surprisal=1e9), attention_mask=mask)
            assert out.sequences.tolist() == plain.sequences.tolist(), (strategy, cache)
            assert out.refreshes == 1
            # A left refresh at every step (the suffix never recomputed) is exact there too.
            left = generate(model, ids, config(strategy, cache=cache, cache_surprisal=0.0), attention_mask=mask)
            assert left.sequences.tolist() == plain.sequences.tolist(), (strategy, cache)


def test_surprisal_counts_information_of_committed_tokens_only():
    policy = SurprisalRefresh(nats=0.5)
    policy.start_block(torch.ones(2, 3, dtype=torch.bool))
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.99, 0.01], [0.5, 0.5]],
                                     [[0.99, 0.01], [0.99, 0.01], [0.99, 0.01]]]))
    tokens = torch.zeros(2, 3, dtype=torch.long)
    # Only committed positions count: row 0's coin flips at positions 0 and 2 are not committed yet.
    policy.observe(torch.tensor([[False, True, False], [True, True, True]]), tokens, logits)
    assert policy.refresh_now(1).tolist() == [False, False]  # 0.01 and 0.03 nats: below the budget
    policy.observe(torch.tensor([[True, False, False], [False, False, False]]), tokens, logits)
    assert policy.refresh_now(2).tolist() == [True, False]  # row 0 committed 0.69 nats: it refreshes alone
    assert policy.refresh_now(3).tolist() == [False, False]  # and its budget starts over


def test_rows_refresh_on_their_own_and_cost_what_they_cost_alone(deep):
    ids, mask = left_pad(PROMPTS)
    for strategy in ("low_confidence", "ccd"):
        cfg = config(strategy, cache="dual", cache_surprisal=0.05)
        batched = generate(deep, ids, cfg, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            alone = generate(deep, torch.tensor([prompt]), cfg)
            assert batched.generated[row].tolist() == alone.generated[0].tolist()
            # Positions per row count the row's own canvas (padding included) at refreshes, the block otherwise.
            width = ids.shape[1]
            expected = alone.tokens_per_row[0] + alone.refreshes * (width - len(prompt))
            assert batched.tokens_per_row[row] == expected, (strategy, row)
        assert batched.model_tokens >= int(batched.tokens_per_row.sum())  # + rows already done, still in the batch


def test_default_policy_and_refusals():
    cfg = DiffusionGenerationConfig(gen_length=8, cache="dual")
    assert make_refresh_policy(cfg).name == "surprisal"
    assert make_refresh_policy(cfg.update(cache_refresh=2)).name == "interval"
    assert make_refresh_policy(cfg.update(cache_policy="block")).name == "block"
    with pytest.raises(ConfigError, match="cache_refresh=2 needs a KV cache"):
        DiffusionGenerationConfig(gen_length=8, cache_refresh=2)
    with pytest.raises(ConfigError, match="cache_policy='block' needs a KV cache"):
        DiffusionGenerationConfig(gen_length=8, cache_policy="block")
    with pytest.raises(ConfigError, match="cache_policy"):
        DiffusionGenerationConfig(gen_length=8, cache="dual", cache_policy="sometimes")
    with pytest.raises(ConfigError, match="cache_surprisal"):
        DiffusionGenerationConfig(gen_length=8, cache="dual", cache_surprisal=-1.0)
    with pytest.raises(ConfigError, match=r"gen_length=30 \(--gen-length\) is not divisible by block_length=7 "
                                          r"\(--block-length\)"):
        DiffusionGenerationConfig(gen_length=30, block_length=7)


def test_a_block_filled_by_its_refresh_pass_runs_no_extra_cached_pass(deep):
    """Fast-dLLM runs one more (cached) pass after a refresh that filled the whole block; this loop stops."""
    ids, mask = left_pad(PROMPTS)
    cfg = config("threshold", threshold=1e-6)  # every position clears the threshold on the first pass
    for cache in ("none", "prefix", "dual"):
        out = generate(deep, ids, cfg.update(cache=cache), attention_mask=mask)
        assert out.nfe == 3 and out.block_nfe == [1, 1, 1], cache


def test_a_model_preferring_the_mask_token_still_fills_the_canvas():
    model = tiny_llada_like(num_hidden_layers=1, seed=7)
    mask_id = model.config.mask_token_id

    def mask_wins(step, x, logits):
        logits = logits.clone()
        logits[..., mask_id] = 1e4  # the model's top choice is [MASK] everywhere
        return logits

    ids = torch.tensor([[5, 9, 17]])
    for strategy in ("low_confidence", "threshold", "ccd", "entropy"):
        for temperature in (0.0, 1.0):
            out = generate(model, ids, config(strategy, temperature=temperature), logits_hook=mask_wins)
            assert not (out.generated == mask_id).any(), (strategy, temperature)


def _canvas(model, prompts, gen_length=12):
    ids, mask = left_pad(prompts)
    x = torch.cat([ids, torch.full((ids.shape[0], gen_length), model.config.mask_token_id)], 1)
    return x, torch.cat([mask, mask.new_ones(ids.shape[0], gen_length)], 1)


def test_left_refresh_recomputes_the_left_and_keeps_the_suffix(deep):
    """scope="left": the prompt, the finished blocks and the block get fresh keys/values; the masked suffix keeps
    the stored ones. With nothing committed since a full refresh it equals that refresh."""
    from cmikit.decoding.adapters import BlockKVCache, adapt

    adapter = adapt(deep)
    x, mask = _canvas(deep, PROMPTS)
    lo, hi = 10, 14
    full = BlockKVCache(adapter, "dual")
    full_logits = full.refresh(x, mask, lo, hi, keep=(lo, hi))
    cache = BlockKVCache(adapter, "dual", scope="left")
    assert torch.equal(cache.step(x, mask, lo, hi, True)[0], full_logits)  # the first refresh is a full forward
    logits, run = cache.step(x, mask, lo, hi, True)  # nothing committed: the same numbers
    assert run.tolist() == [hi] * 3
    torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-5)
    for layer, (k, v) in full.store.frozen.items():
        torch.testing.assert_close(cache.store.frozen[layer][0], k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.store.frozen[layer][1], v, rtol=1e-5, atol=1e-5)
    before = {layer: (k.clone(), v.clone()) for layer, (k, v) in cache.store.frozen.items()}
    x[:, lo:lo + 2] = 7  # the block commits two tokens; row 1 refreshes, rows 0 and 2 run cached
    logits, run = cache.step(x, mask, lo, hi, torch.tensor([False, True, False]))
    assert run.tolist() == [hi - lo, hi, hi - lo]
    prefix, suffix = slice(0, lo), slice(lo, None)  # the stored positions: [0, lo) then the suffix [hi, L)
    for layer, stored in cache.store.frozen.items():
        for now, then in zip(stored, before[layer]):  # keys and values
            assert torch.equal(now[:, :, suffix], then[:, :, suffix])  # no row's suffix moved
            assert torch.equal(now[[0, 2]], then[[0, 2]])  # the cached rows kept everything
    last = max(cache.store.frozen)  # layer 0's keys depend on their own token only; deeper ones see the commits
    assert not torch.allclose(cache.store.frozen[last][0][1, :, prefix], before[last][0][1, :, prefix])
    alone = BlockKVCache(adapter, "dual", scope="left")  # row 1 alone: the same numbers as in the batch
    x_before = x.clone()
    x_before[:, lo:lo + 2] = deep.config.mask_token_id
    alone.refresh(x_before[1:2], mask[1:2], lo, hi)
    torch.testing.assert_close(alone.step(x[1:2], mask[1:2], lo, hi, True)[0], logits[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", ["llada", "dream"])
def test_refresh_projects_only_the_block_onto_the_vocabulary(make):
    """keep=(lo, hi) runs the vocabulary projection on the block's rows only (logits_to_keep), shifted for Dream,
    and gives the full forward's numbers; a model without logits_to_keep gets the same by slicing."""
    from cmikit.decoding.adapters import adapt
    from cmikit.harness.testing import tiny_dream_like

    model = tiny_llada_like(seed=2) if make == "llada" else tiny_dream_like(seed=2)
    adapter = adapt(model)
    x, mask = _canvas(model, PROMPTS)
    full = adapter.logits(x, mask)
    assert adapter.takes_logits_to_keep()
    for lo, hi in ((0, 4), (6, 10), (14, 18)):
        torch.testing.assert_close(adapter.logits(x, mask, keep=(lo, hi)), full[:, lo:hi], rtol=1e-5, atol=1e-5)
    adapter._logits_to_keep = False  # the slicing fallback
    torch.testing.assert_close(adapter.logits(x, mask, keep=(6, 10)), full[:, 6:10], rtol=1e-5, atol=1e-5)


def test_refresh_scope_defaults_and_refusals():
    from cmikit.decoding.cache_policy import resolved_refresh_scope

    cfg = DiffusionGenerationConfig(gen_length=8, cache="dual")
    assert resolved_refresh_scope(cfg) == "left"
    assert resolved_refresh_scope(cfg.update(cache_policy="block")) == "canvas"
    assert resolved_refresh_scope(cfg.update(cache_refresh=2)) == "canvas"
    assert resolved_refresh_scope(cfg.update(cache_policy="block", cache_refresh_scope="left")) == "left"
    with pytest.raises(ConfigError, match="cache_refresh_scope"):
        DiffusionGenerationConfig(gen_length=8, cache="dual", cache_refresh_scope="suffix")
    with pytest.raises(ConfigError, match="cache_refresh_scope='left' needs a KV cache"):
        DiffusionGenerationConfig(gen_length=8, cache_refresh_scope="left")
