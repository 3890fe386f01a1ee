"""Block-diffusion models (causal between blocks, bidirectional inside one) and their exact cache."""

from __future__ import annotations

import pytest
import torch

from cmikit.decoding import DiffusionGenerationConfig, adapt, generate
from cmikit.decoding.block_diffusion import block_causal_mask, block_ids
from cmikit.harness.errors import ConfigError
from cmikit.harness.testing import left_pad, tiny_llada_like

PROMPTS = [[5, 9, 17, 23, 4, 8], [11, 3], [40, 41, 42, 43]]




@pytest.fixture(scope="module")
def bd_model():
    model = tiny_llada_like(num_hidden_layers=2, seed=11)
    model.config.block_diffusion = True
    model.config.bd_size = 4
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
        model.lm_head.weight[model.config.mask_token_id] = 0
    return model


def config(strategy: str, **kw) -> DiffusionGenerationConfig:
    base = dict(gen_length=12, block_length=4, strategy=strategy, threshold=0.05, ccd_entropy_threshold=3.5,
                warmup_steps=2, seed=0)
    base.update(kw)
    return DiffusionGenerationConfig(**base)


def test_masks_decoding_and_training():
    blocks = block_ids(torch.arange(7), 3, 2)
    assert blocks.tolist() == [0, 0, 0, 1, 1, 2, 2]
    allowed = block_causal_mask(blocks, blocks)[0, 0] == 0
    assert allowed[3].tolist() == [True] * 5 + [False] * 2  # block 1 sees the prompt and itself, not block 2
    assert allowed[0].tolist() == [True] * 3 + [False] * 4  # the prompt sees only itself
    # Training: [prompt(1) | noisy blocks 1, 2 | clean blocks 1, 2]; positions of the copies coincide.
    blocks = torch.tensor([0, 1, 2, 1, 2])
    noisy = torch.tensor([False, True, True, False, False])
    allowed = block_causal_mask(blocks, blocks, query_noisy=noisy, key_noisy=noisy)[0, 0] == 0
    assert allowed[2].tolist() == [True, False, True, True, False]  # noisy 2: prompt, itself, clean 1
    assert allowed[1].tolist() == [True, True, False, False, False]  # noisy 1: prompt and itself
    assert allowed[4].tolist() == [True, False, False, True, True]  # clean 2: prompt, clean 1, itself


def test_earlier_blocks_do_not_see_later_ones(bd_model):
    adapter = adapt(bd_model)
    assert adapter.kind == "block-diffusion" and adapter.bd_size == 4
    ids = torch.tensor([[5, 9, 17, 23, 4, 8, 30, 31, 32, 33, 34, 35]])
    other = ids.clone()
    other[0, 10:] = torch.tensor([50, 51])
    a = adapter.logits(ids, None, prompt_length=6)
    b = adapter.logits(other, None, prompt_length=6)
    assert torch.equal(a[:, :10], b[:, :10]) and not torch.equal(a[:, 10:], b[:, 10:])


def test_exact_cache_gives_the_tokens_of_no_cache(bd_model):
    ids, mask = left_pad(PROMPTS)
    for cache, kw in (("dual", {"strategy": "low_confidence"}), ("dual", {"strategy": "ccd"}),
                      ("prefix", {"strategy": "threshold", "temperature": 1.0}),
                      ("dual", {"strategy": "low_confidence", "cfg_scale": 1.0})):
        plain = generate(bd_model, ids, config(**kw), attention_mask=mask)
        cached = generate(bd_model, ids, config(**kw, cache=cache), attention_mask=mask)
        assert cached.sequences.tolist() == plain.sequences.tolist(), kw
        assert cached.nfe == plain.nfe
        assert cached.model_tokens < plain.model_tokens


def test_exact_cache_counts_positions(bd_model):
    prompt = torch.tensor([[5, 9, 17, 23]])
    out = generate(bd_model, prompt, config("low_confidence", cache="dual"))
    # Block 1: prompt + block (8), then 3 x 4; blocks 2, 3: finished block + block (8), then 3 x 4.
    assert out.nfe == 12 and out.model_tokens == 3 * 8 + 9 * 4
    assert out.refreshes == 3


def test_block_length_must_be_the_models(bd_model):
    with pytest.raises(ConfigError, match="bd_size=4.*--block-length 4"):
        generate(bd_model, torch.tensor([[1, 2]]), config("low_confidence", block_length=6))


def test_shipped_block_diffusion_model_decodes_the_same_tokens_cached():
    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    model, tokenizer, task = load_tiny_dlm(train_if_missing=False, progress=False, block_diffusion=True)
    assert adapt(model).bd_size == 8
    problems = task.problems(24, seed=12345)
    prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
    for strategy in ("low_confidence", "threshold"):
        cfg = DiffusionGenerationConfig(gen_length=task.gen_length, block_length=8, strategy=strategy)
        plain = generate(model, prompts, cfg)
        cached = generate(model, prompts, cfg.update(cache="dual"))
        assert torch.equal(plain.generated, cached.generated), strategy
        assert cached.model_tokens < plain.model_tokens / 2
        correct = sum(task.is_correct(p, "".join(tokenizer.convert_ids_to_tokens(row.tolist())))
                      for (p, _), row in zip(problems, cached.generated))
        assert correct >= 0.9 * len(problems), (strategy, correct)
