"""Collator: completion masks, EOS handling, the prefix check, and the two layouts agreeing."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
from cmikit.sami.loss import SAMIInputError
from cmikit.sami.trainer import SAMIDataCollator, logprob_matrix

ROWS = [
    {"prompts": ["Be kind. Q: hi?\nA:", "Be rude. Q: hi?\nA:"], "responses": [" hello there", " go away"]},
    {"prompts": ["P1 long prompt here:", "P2:"], "responses": [" a", " bb cc"]},
]


@pytest.mark.parametrize("mask_eos", [False, True])
def test_padded_masks_cover_exactly_the_response(mask_eos):
    tok = tiny_tokenizer()
    batch = SAMIDataCollator(tok, layout="padded", mask_eos=mask_eos)(ROWS)
    assert batch["input_ids"].shape[0] == 2 * 2 * 2
    n = 0
    for row in ROWS:
        for _prompt in row["prompts"]:
            for resp in row["responses"]:
                ids = batch["input_ids"][n][batch["completion_mask"][n].bool()].tolist()
                expected = tok(resp, add_special_tokens=False)["input_ids"] + ([] if mask_eos else [tok.eos_token_id])
                assert ids == expected
                # Nothing before the response is marked, and the mask is contiguous.
                nz = batch["completion_mask"][n].nonzero().flatten()
                assert nz.tolist() == list(range(int(nz[0]), int(nz[-1]) + 1))
                n += 1


def test_shared_layout_scores_exactly_the_response_tokens():
    tok = tiny_tokenizer()
    batch = SAMIDataCollator(tok, layout="shared_prompt")(ROWS)
    assert batch["input_ids"].shape[0] == 2 * 2  # one row per (query, constitution)
    for r in range(4):
        row = ROWS[r // 2]
        for j, resp in enumerate(row["responses"]):
            targets = batch["score_target"][r][batch["score_segment"][r] == j].tolist()
            assert targets == tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # A response token never attends to another response's tokens.
    seg_cols = batch["score_index"][0]
    mask = batch["attention_mask"][0, 0]
    assert mask.dtype == torch.bool and not mask.triu(1).any()
    assert seg_cols.min() == batch["logits_start"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_layouts_give_the_same_matrix(reduction):
    tok, model = tiny_tokenizer(), tiny_causal_lm()
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl
        a, la = logprob_matrix(model, SAMIDataCollator(tok, layout="padded")(ROWS), reduction)
        b, lb = logprob_matrix(model, SAMIDataCollator(tok, layout="shared_prompt")(ROWS), reduction)
        assert a.shape == (2, 2, 2)
        assert torch.allclose(a, b, atol=1e-4), impl
        assert la.tolist() == lb.long().tolist()


def _merging_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer that merges 'a' + 'b' into one token: a prompt ending in 'a' and a response starting
    with 'b' tokenise differently together than apart."""
    vocab = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3, ":": 4, "ab": 5, " ": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def test_prefix_check_fires_on_a_merging_tokenizer():
    tok = _merging_tokenizer()
    assert tok("a", add_special_tokens=False)["input_ids"] + tok("b", add_special_tokens=False)["input_ids"] \
        != tok("ab", add_special_tokens=False)["input_ids"]
    collator = SAMIDataCollator(tok, layout="padded")
    with pytest.raises(SAMIInputError, match="not a prefix"):
        collator([{"prompts": ["a:a", "b:a"], "responses": ["b", "ba"]}])
    # With a separator the boundary is clean and the same rows collate.
    batch = collator([{"prompts": ["a:a ", "b:a "], "responses": ["b", "ba"]}])
    assert batch["completion_mask"].sum().item() == (1 + 1) * 2 + (2 + 1) * 2


def test_bad_rows_are_refused():
    tok = tiny_tokenizer()
    collator = SAMIDataCollator(tok)
    with pytest.raises(SAMIInputError, match="C >= 2"):
        collator([{"prompts": ["x:"], "responses": [" y"]}])
    with pytest.raises(SAMIInputError, match="one response per constitution"):
        collator([{"prompts": ["x:", "y:"], "responses": [" y"]}])
    with pytest.raises(SAMIInputError, match="different numbers"):
        collator([{"prompts": ["x:", "y:"], "responses": [" a", " b"]},
                  {"prompts": ["x:", "y:", "z:"], "responses": [" a", " b", " c"]}])
