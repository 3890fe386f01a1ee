"""SAMITrainer: LoRA steps lower the loss on the real model; the paper-era quirk flags do what they say."""

from __future__ import annotations

import datasets
import pytest
import torch

from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
from cmikit.sami.loss import sami_loss
from cmikit.sami.trainer import SAMIConfig, SAMIDataCollator, SAMITrainer, logprob_matrix


def _rows():
    return [
        {"prompts": ["Be brief. Q: sky?\nA:", "Be long. Q: sky?\nA:"], "responses": [" blue", " it is blue and wide"]},
        {"prompts": ["Be brief. Q: sea?\nA:", "Be long. Q: sea?\nA:"], "responses": [" wet", " salty and very deep"]},
    ]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2,
                use_cpu=True, disable_tqdm=True, seed=0, optim="sgd")
    base.update(kw)
    return SAMIConfig(**base)


def _flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_lr_zero_first_step_quirk_leaves_weights_unchanged(tmp_path):
    tok = tiny_tokenizer()
    ds = datasets.Dataset.from_list(_rows())
    moved = {}
    for flag in (False, True):
        model = tiny_causal_lm()
        before = _flat(model)
        SAMITrainer(model, _args(tmp_path, lr_zero_first_step=flag), train_dataset=ds, processing_class=tok).train()
        moved[flag] = (_flat(model) - before).abs().max().item()
    assert moved[True] == 0.0 and moved[False] > 0.0


def test_last_microbatch_gradient_only_quirk_halves_the_update(tmp_path):
    # Two identical micro-batches: accumulation sums g/2 + g/2 = g; the quirk keeps only the last g/2.
    tok = tiny_tokenizer()
    ds = datasets.Dataset.from_list([_rows()[0], _rows()[0]])
    updates = {}
    for flag in (False, True):
        model = tiny_causal_lm()
        before = _flat(model)
        args = _args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                     last_microbatch_gradient_only=flag)
        SAMITrainer(model, args, train_dataset=ds, processing_class=tok).train()
        updates[flag] = _flat(model) - before
    assert torch.allclose(updates[True] * 2, updates[False], atol=1e-6, rtol=1e-3)


def test_trainer_logs_sami_metrics_and_refuses_empty_data(tmp_path):
    tok = tiny_tokenizer()
    trainer = SAMITrainer(tiny_causal_lm(), _args(tmp_path), train_dataset=datasets.Dataset.from_list(_rows()),
                          processing_class=tok)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "mi_bound" in h][0]
    assert logged["mi_bound"] == pytest.approx(0.6931 - logged["loss"], abs=1e-3)
    assert {"loss_row", "loss_col", "accuracy_row", "accuracy_col", "completion_length"} <= set(logged)
    with pytest.raises(ValueError, match="empty"):
        SAMITrainer(tiny_causal_lm(), _args(tmp_path), train_dataset=datasets.Dataset.from_list([]),
                    processing_class=tok)
    with pytest.raises(ValueError, match="layout"):
        _args(tmp_path, layout="packed")


@pytest.mark.embedded
def test_two_lora_steps_lower_the_loss_on_the_embedded_model(tmp_path):
    from peft import LoraConfig

    from cmikit.harness import load_model

    model, tok = load_model("smollm2-135m-instruct", eval_mode=False)
    rows = [
        {"prompts": [[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": q}],
                     [{"role": "system", "content": "Answer at length."}, {"role": "user", "content": q}]],
         "responses": [short, long]}
        for q, short, long in [("What colour is the sky?", "Blue.", "The sky is blue on a clear day because air scatters blue light."),
                               ("Is ice cold?", "Yes.", "Yes, ice is cold: it is frozen water below zero degrees.")]
    ]
    collator = SAMIDataCollator(tok)
    batch = collator(rows)

    def loss_now(m):
        m.eval()
        with torch.no_grad():
            return sami_loss(logprob_matrix(m, batch)[0]).loss.item()

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = SAMIConfig(output_dir=str(tmp_path / "lora"), per_device_train_batch_size=2, max_steps=2,
                      learning_rate=2e-3, use_cpu=True, disable_tqdm=True, seed=0)
    trainer = SAMITrainer(model, args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                          peft_config=lora)
    before = loss_now(trainer.model)
    trainer.train()
    after = loss_now(trainer.model)
    assert after < before - 1e-3, (before, after)
    assert sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) < 1_000_000  # only LoRA trains


@pytest.mark.parametrize("layout", ["shared_prompt", "padded"])
def test_gradient_checkpointing_and_bf16_autocast_train(tmp_path, layout):
    tok = tiny_tokenizer()
    model = tiny_causal_lm()
    before = _flat(model)
    args = _args(tmp_path, layout=layout, gradient_checkpointing=True, bf16=True)
    trainer = SAMITrainer(model, args, train_dataset=datasets.Dataset.from_list(_rows()), processing_class=tok)
    trainer.train()
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert 0.0 < loss < 2.0 and (_flat(model) - before).abs().max().item() > 0
    assert next(model.parameters()).dtype == torch.float32  # fp32 masters, bf16 only in autocast
