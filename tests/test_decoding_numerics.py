"""``numerics="reference"``: on a bf16 model, the loop equals LLaDA's and Dream's sampling maths done in bf16.

The two references below are re-implementations of the maths of ``ML-GSAI/LLaDA:generate.py`` (``generate``,
``low_confidence``, temperature 0) and Dream's ``diffusion_generate`` (``_sample`` with ``maskgit_plus`` /
``topk_margin`` / ``entropy``, temperature 0, eps schedule), written for this test: the model's dtype throughout,
``F.softmax``, ``torch.topk`` over the whole canvas row (per row for LLaDA, on the batch for Dream).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cmikit.decoding import DiffusionGenerationConfig, adapt, generate

VOCAB, MASK = 16, 15


class FixedLogits(torch.nn.Module):
    """bf16 logits from fixed tables: ``base[position] + sum of coupling[j, position] over unmasked j``, so which
    positions are committed first changes later predictions; exact ties (a coarse grid) and near-ties that bf16
    softmax rounds together."""

    def __init__(self, length: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        grid = torch.randint(-8, 9, (length, VOCAB), generator=gen) * 0.5
        # Plateau positions share one distribution up to small changes of its unlikely tokens: their top
        # probabilities differ in float32 but round to the same bf16 value.
        plateau = torch.rand(length, 1, generator=gen) < 0.6
        shared = grid[:1].clone()
        shared[0, 0] = 6.0
        fine = torch.randn(length, VOCAB, generator=gen) * 0.1 * (shared < 2)
        self.base = torch.where(plateau, shared + fine, grid).to(torch.bfloat16)
        self.coupling = (torch.randint(-2, 3, (length, length, VOCAB), generator=gen) * 0.5).to(torch.bfloat16)
        self.base[:, MASK] = -30  # never predict [MASK]
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))  # the model's dtype

    def forward(self, input_ids, attention_mask=None, **_):
        length = input_ids.shape[1]
        seen = (input_ids != MASK).to(torch.bfloat16)
        coupled = torch.einsum("bj,jpv->bpv", seen, self.coupling[:length, :length])
        return SimpleNamespace(logits=self.base[:length] + coupled)


def llada_reference(model, prompt, steps, gen_length, block_length):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    blocks = gen_length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        start = prompt.shape[1] + b * block_length
        count = (x[:, start:start + block_length] == MASK).sum(1, keepdim=True)
        schedule = (count // per_block).repeat(1, per_block)
        for row in range(x.shape[0]):
            schedule[row, : int(count[row] % per_block)] += 1
        for i in range(per_block):
            mask_index = x == MASK
            logits = model(x).logits
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, start + block_length:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for row in range(confidence.shape[0]):
                transfer[row, torch.topk(confidence[row], k=int(schedule[row, i])).indices] = True
            x[transfer] = x0[transfer]
    return x


def dream_reference(model, prompt, steps, gen_length, alg, eps=1e-3):
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK, dtype=torch.long)], 1)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = model(x).logits
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        probs = torch.softmax(mask_logits, dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            ordered = torch.sort(probs, dim=-1, descending=True).values
            confidence = ordered[:, 0] - ordered[:, 1]
        elif alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        masks = mask_index.sum() / mask_index.shape[0]
        n = int(masks * (1 - s / t)) if i < steps - 1 else int(masks)
        full = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full[mask_index] = confidence
        if n > 0:
            index = torch.topk(full, n).indices
            candidate = torch.full_like(x, MASK)
            candidate[mask_index] = x0
            rows = torch.arange(x.shape[0])[:, None].expand_as(index)
            x[rows, index] = candidate[rows, index]
    return x


PROMPT = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def run(model, numerics, **kw):
    adapter = adapt(model, mask_token_id=MASK, shift_logits=False)
    return generate(adapter, PROMPT, DiffusionGenerationConfig(numerics=numerics, **kw)).sequences


@pytest.mark.parametrize("seed", range(6))
def test_reference_numerics_equal_llada_maths_in_bf16(seed):
    model = FixedLogits(4 + 16, seed)
    for steps, block in ((16, 16), (8, 8), (16, 4)):
        expected = llada_reference(model, PROMPT, steps, 16, block)
        got = run(model, "reference", gen_length=16, block_length=block, steps=steps, strategy="low_confidence")
        assert got.tolist() == expected.tolist(), (steps, block)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("seed", range(6))
def test_reference_numerics_equal_dream_maths_in_bf16(seed, alg):
    model = FixedLogits(4 + 16, seed)
    for steps in (16, 8, 5):
        expected = dream_reference(model, PROMPT, steps, 16, alg)
        got = run(model, "reference", gen_length=16, steps=steps, strategy=alg)
        assert got.tolist() == expected.tolist(), steps


def test_float32_numerics_differ_somewhere_on_these_logits():
    """The test above has teeth: the float32 default (stable ranking of float32 probabilities) departs from the
    bf16 references on some of these tables."""
    differ = 0
    for seed in range(6):
        model = FixedLogits(4 + 16, seed)
        differ += run(model, "float32", gen_length=16, steps=16, strategy="low_confidence").tolist() != \
            llada_reference(model, PROMPT, 16, 16, 16).tolist()
        for alg in ("maskgit_plus", "topk_margin", "entropy"):
            differ += run(model, "float32", gen_length=16, steps=16, strategy=alg).tolist() != \
                dream_reference(model, PROMPT, 16, 16, alg).tolist()
    assert differ > 0


def test_reference_numerics_keep_the_model_dtype_and_run_every_strategy():
    model = FixedLogits(4 + 16, 0)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, *a, **k):
            out = model(*a, **k)
            seen.append(out.logits.dtype)
            return out

    for strategy in ("random", "threshold", "entropy_bound", "ccd", "ccd_marginal", "origin"):
        out = generate(adapt(Spy(), mask_token_id=MASK), PROMPT,
                       DiffusionGenerationConfig(gen_length=16, block_length=8, strategy=strategy, numerics="reference",
                                                 warmup_steps=2, seed=0))
        assert (out.generated != MASK).all()
    assert set(seen) == {torch.bfloat16}
