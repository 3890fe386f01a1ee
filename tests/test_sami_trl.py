"""SAMITrainer on TRL's conventions (issue 15): constructed like ``DPOTrainer`` (model as a string, tokenizer loaded,
``peft_config``), TRL's pieces give today's numbers exactly, ``save_model`` writes TRL's model card, and
``scripts/sami.py`` (TRL's script shape) trains one round from (constitution, query, response) rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import datasets
import pytest
import torch

from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
from cmikit.sami import trainer as trainer_mod
from cmikit.sami.trainer import SAMIConfig, SAMIDataCollator, SAMITrainer

ROOT = Path(__file__).resolve().parents[1]


def _rows(n=4):
    words = ["sky", "sea", "tree", "rock", "bird", "fish", "sun", "moon", "rain", "snow"]
    return [{"prompts": [f"Be brief. Q: {words[k]}?\nA:", f"Be long. Q: {words[k]}?\nA:"],
             "responses": [f" {words[k]} is short", f" the {words[k]} is long and wide {k}"]} for k in range(n)]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
                use_cpu=True, disable_tqdm=True, seed=0, report_to="none", train_sampling_strategy="sequential")
    base.update(kw)
    return SAMIConfig(**base)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_causal_lm(seed=3).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_dpo_style_construction_loads_model_and_tokenizer_and_trains_lora(tmp_path, model_dir):
    from peft import LoraConfig, PeftModel

    trainer = SAMITrainer(str(model_dir), args=_args(tmp_path), train_dataset=datasets.Dataset.from_list(_rows()),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    assert isinstance(trainer.model, PeftModel)
    assert trainer.processing_class.get_vocab() == tiny_tokenizer().get_vocab()  # loaded from the folder
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert lora_b and all(v.abs().max() == 0 for v in lora_b.values())  # PEFT initialises B at 0
    trainer.train()
    assert trainer.state.global_step == 2
    params = dict(trainer.model.named_parameters())
    assert max((params[n] - v).abs().max().item() for n, v in lora_b.items()) > 0  # the adapter learned
    assert all(torch.equal(params[n], v) for n, v in frozen.items())  # the base weights did not move
    assert "mi_bound" in next(h for h in trainer.state.log_history if "loss" in h)


def test_compute_metrics_gets_the_logprob_matrix_and_diagonal_labels(tmp_path):
    seen = {}

    def metrics(pred):
        seen["shapes"] = (pred.predictions.shape, pred.label_ids.shape)
        seen["labels"] = pred.label_ids
        seen["predictions"] = pred.predictions
        return {"diag_acc": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    rows = datasets.Dataset.from_list(_rows(3))
    trainer = SAMITrainer(tiny_causal_lm(seed=2), _args(tmp_path), eval_dataset=rows, train_dataset=rows,
                          processing_class=tiny_tokenizer(), compute_metrics=metrics)
    out = trainer.evaluate()
    assert seen["shapes"] == ((3, 2, 2), (3, 2))
    assert (seen["labels"] == [[0, 1]] * 3).all()
    from cmikit.sami.trainer import logprob_matrix

    with torch.no_grad():
        expected, _ = logprob_matrix(trainer.model.eval(), trainer.data_collator([rows[i] for i in range(3)]))
    assert torch.allclose(torch.as_tensor(seen["predictions"]), expected, atol=1e-5)
    assert out["eval_diag_acc"] == float((expected.argmax(-1) == torch.arange(2)).float().mean())
    assert "eval_mi_bound" in trainer.state.log_history[-1]  # SAMI's metrics are logged, as DPO's


def test_model_init_kwargs_reach_the_model_loaded_from_a_string(tmp_path, model_dir):
    args = _args(tmp_path, model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "eager"})
    trainer = SAMITrainer(str(model_dir), args=args, train_dataset=datasets.Dataset.from_list(_rows()))
    assert trainer.model.dtype == torch.bfloat16
    assert trainer.model.config._attn_implementation == "eager"
    # The JSON string form (command line, YAML) is parsed as DPOConfig's.
    assert _args(tmp_path, model_init_kwargs='{"dtype": "float32"}').model_init_kwargs == {"dtype": "float32"}


def _old_token_logprobs(logits, labels):
    """The implementation before TRL's selective_log_softmax (fp32 copy of all logits, then logsumexp)."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _old_padded(self, encoded):
    """The collator's padded layout before TRL's ``pad``."""
    seqs, masks = [], []
    for per_const in encoded:
        for prompt_ids, completions in per_const:
            for comp in completions:
                seqs.append(prompt_ids + comp)
                masks.append([0] * len(prompt_ids) + [1] * len(comp))
    width = trainer_mod._pad_to(max(len(s) for s in seqs), self.pad_to_multiple_of)
    input_ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion = torch.zeros((len(seqs), width), dtype=torch.long)
    for n, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[n, : len(s)] = torch.tensor(s)
        attention[n, : len(s)] = 1
        completion[n, : len(m)] = torch.tensor(m)
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


# The configuration of tests/test_sami_reference.py's equality test (research-code loop: padded layout, 7 rows,
# accumulation 3, both quirks, reference schedule, weight decay on all parameters), and the default layout.
REFERENCE = dict(per_device_train_batch_size=1, gradient_accumulation_steps=3, learning_rate=3e-3,
                 optim="adamw_torch", layout="padded", lr_zero_first_step=True, last_microbatch_gradient_only=True,
                 schedule="reference", weight_decay=0.01, weight_decay_params="all")
SHARED = dict(per_device_train_batch_size=1, learning_rate=3e-3, optim="adamw_torch", layout="shared_prompt")


def _three_steps(tmp_path, name, n_rows, settings):
    model = tiny_causal_lm(seed=1)
    args = _args(tmp_path / name, max_steps=3, **settings)
    trainer = SAMITrainer(model, args, train_dataset=datasets.Dataset.from_list(_rows(n_rows)),
                          processing_class=tiny_tokenizer())
    trainer.train()
    return _flat(model), [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize(("n_rows", "settings"), [(7, REFERENCE), (3, SHARED)], ids=["reference", "shared_prompt"])
def test_loss_and_weights_after_three_steps_equal_the_former_implementation(tmp_path, monkeypatch, n_rows,
                                                                            settings):
    new_w, new_loss = _three_steps(tmp_path, "new", n_rows, settings)
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "token_logprobs", _old_token_logprobs)
        m.setattr(SAMIDataCollator, "_padded", _old_padded)
        old_w, old_loss = _three_steps(tmp_path, "old", n_rows, settings)
    assert len(new_loss) == 3 and new_loss == old_loss
    assert (new_w - old_w).abs().max().item() == 0.0
    assert (new_w - _flat(tiny_causal_lm(seed=1))).abs().max() > 1e-4  # the steps did move the weights


def test_token_logprobs_on_bf16_logits_match_fp32_to_bf16_precision():
    from cmikit.sami.loss import token_logprobs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen) * 4
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    exact = token_logprobs(logits, labels)
    assert torch.equal(exact, _old_token_logprobs(logits, labels))  # fp32: identical
    approx = token_logprobs(logits.bfloat16(), labels)
    assert approx.dtype == torch.float32
    # bf16 has an 8-bit mantissa: |log p| <= ~20 here, so errors stay below 20 * 2**-8.
    assert (approx - exact).abs().max() < 20 * 2 ** -8


def test_save_model_writes_trl_model_card_with_tags_and_citation(tmp_path, model_dir):
    trainer = SAMITrainer(str(model_dir), args=_args(tmp_path, max_steps=1),
                          train_dataset=datasets.Dataset.from_list(_rows(2)))
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    header = card.split("---")[1]
    assert "- trl" in header and "- sami" in header
    assert "2404.14313" in card and "franken2024sami" in card
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def _load_script():
    spec = importlib.util.spec_from_file_location("sami_script", ROOT / "scripts" / "sami.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sami_script"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _triples(path: Path, n_queries=3):
    rows = []
    for k in range(n_queries):
        for c, y in (("1. Be brief.", f" short {k}"), ("1. Be verbose.", f" a long answer number {k}")):
            rows.append({"constitution": c, "query": f"What is {k}?", "response": y})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scripts_sami_trains_one_round_from_triples_and_yaml(tmp_path, model_dir):
    script = _load_script()
    data = _triples(tmp_path / "rows.jsonl")
    (tmp_path / "round.yaml").write_text(
        f"model_name_or_path: {model_dir}\ndataset_name: {data}\nprompt_format: plain\nmax_steps: 2\n"
        f"per_device_train_batch_size: 2\nlearning_rate: 0.01\nuse_cpu: true\nreport_to: none\n"
        f"use_peft: true\nlora_r: 4\nlora_target_modules: [q_proj, v_proj]\n")
    out = tmp_path / "run"
    code = script.cli(["--config", str(tmp_path / "round.yaml"), "--output_dir", str(out), "--disable_tqdm", "true"])
    assert code == 0
    assert (out / "README.md").is_file()
    from safetensors.torch import load_file

    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0  # two steps trained the adapter (B starts at 0)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # ModelConfig → get_peft_config


def test_rows_from_triples_builds_the_prompt_matrix_and_refuses_ragged_groups():
    from cmikit.sami.loss import SAMIInputError
    from cmikit.sami.prompts import build_prompt
    from cmikit.sami.sampling import rows_from_triples

    ds = datasets.Dataset.from_list([
        {"constitution": "A", "query": "q1", "response": "ya"}, {"constitution": "B", "query": "q1", "response": "yb"},
        {"constitution": "A", "query": "q2", "response": "za"}, {"constitution": "B", "query": "q2", "response": "zb"}])
    rows = rows_from_triples(ds, "dialogue", "plain")
    assert len(rows) == 2
    assert rows[1]["prompts"] == [build_prompt("dialogue", "A", "q2"), build_prompt("dialogue", "B", "q2")]
    assert rows[1]["responses"] == ["za", "zb"]
    with pytest.raises(SAMIInputError, match="same number C >= 2"):
        rows_from_triples(ds.select(range(3)), "dialogue", "plain")


def test_scripts_sami_bad_data_is_one_error_line(tmp_path, model_dir, capsys):
    script = _load_script()
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    code = script.cli(["--model_name_or_path", str(model_dir), "--dataset_name", str(bad), "--output_dir",
                       str(tmp_path / "o"), "--use_cpu", "true", "--report_to", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "constitution" in err[-1]


def test_quantization_config_needs_a_model_loaded_from_a_string(tmp_path):
    from transformers import BitsAndBytesConfig

    from cmikit.sami.loss import SAMIInputError

    rows = datasets.Dataset.from_list(_rows(2))
    with pytest.raises(SAMIInputError, match="loaded from a string"):
        SAMITrainer(tiny_causal_lm(), _args(tmp_path), train_dataset=rows, processing_class=tiny_tokenizer(),
                    quantization_config=BitsAndBytesConfig(load_in_8bit=True))


def test_iterate_yaml_keys_still_parse_trust_remote_code_now_in_samiconfig():
    from cmikit.harness.config import parse_config
    from cmikit.sami.iterate import IterateConfig

    cfg, args = parse_config((IterateConfig, SAMIConfig), ["--config", str(ROOT / "configs/sami/smollm2-demo.yaml"),
                                                           "--trust_remote_code", "true"])
    assert args.trust_remote_code is True and not hasattr(cfg, "trust_remote_code")
    assert cfg.use_lora  # the demo's LoRA keys become a LoraConfig through trl's ModelConfig + get_peft_config
    from cmikit.sami.iterate import ExpertIteration

    peft = ExpertIteration.peft_config(type("Loop", (), {"cfg": cfg})())
    assert (peft.r, peft.lora_alpha, sorted(peft.target_modules)) == (
        cfg.lora_r, cfg.lora_alpha, sorted(cfg.lora_target_modules))
