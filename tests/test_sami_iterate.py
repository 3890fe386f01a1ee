"""Expert iteration: resume after a kill without redoing finished stages; bad configurations fail early."""

from __future__ import annotations

import json

import pytest

from cmikit.harness.config import ConfigError, parse_config
from cmikit.harness.errors import CmikitError
from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
from cmikit.sami import iterate as iterate_module
from cmikit.sami.cli import main as sami_main
from cmikit.sami.iterate import ExpertIteration, IterateConfig
from cmikit.sami.trainer import SAMIConfig


@pytest.fixture()
def tiny_run(tmp_path):
    model_dir = tmp_path / "tiny-model"
    tiny_causal_lm().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": f"question number {k}?"}) + "\n" for k in range(7)))
    config = tmp_path / "run.yaml"
    config.write_text("\n".join([
        f"model: {model_dir}", f"queries: {queries}", f"output_dir: {tmp_path / 'run'}",
        "n_heldout: 2", "queries_per_iteration: 4", "iterations: 2", "steps_per_iteration: [1, 1]",
        "use_lora: true", "lora_r: 2", "lora_alpha: 4", "lora_target_modules: [q_proj, v_proj]",
        "max_new_tokens: 5", "generation_batch_size: 8", "eval_batch_size: 2", "drop_identical: false",
        "per_device_train_batch_size: 2", "learning_rate: 0.01", "use_cpu: true", "disable_tqdm: true",
        "save_strategy: steps", "save_steps: 1",
    ]) + "\n")
    return tmp_path, config


def test_killed_run_resumes_without_redoing_finished_stages(tiny_run, monkeypatch):
    tmp_path, config = tiny_run
    cfg, args = parse_config((IterateConfig, SAMIConfig), ["--config", str(config)])
    calls = {"sample": [], "train": [], "evaluate": []}
    real = {k: getattr(ExpertIteration, k) for k in calls}

    def spy(name):
        def wrapper(self, eta, *a):
            if name == "train" and eta == 2 and not calls["train"].count(2):
                calls[name].append(eta)
                raise KeyboardInterrupt("simulated kill while training iteration 2")
            calls[name].append(eta)
            return real[name](self, eta, *a)
        return wrapper

    for name in calls:
        monkeypatch.setattr(ExpertIteration, name, spy(name))
    with pytest.raises(KeyboardInterrupt):
        iterate_module.run_expert_iteration(cfg, args)
    run = tmp_path / "run"
    assert (run / "iteration-1" / "model" / "DONE").exists()
    assert (run / "iteration-2" / "samples" / "DONE").exists()
    assert not (run / "iteration-2" / "model" / "DONE").exists()
    first_samples = (run / "iteration-2" / "samples" / "records.jsonl").read_text()

    generate_calls = []
    from cmikit.harness.backends import TransformersBackend

    real_generate = TransformersBackend.generate
    monkeypatch.setattr(TransformersBackend, "generate",
                        lambda self, p, s=None: generate_calls.append(len(p)) or real_generate(self, p, s))
    results = iterate_module.run_expert_iteration(cfg, args)
    assert [r["iteration"] for r in results["iterations"]] == [0, 1, 2]
    # Only iteration 2's evaluation generated anything on resume: sampling and iteration 1 were not redone.
    assert sum(generate_calls) == 2 * 2  # 2 held-out queries × C = 2
    assert (run / "iteration-2" / "samples" / "records.jsonl").read_text() == first_samples
    assert (run / "iteration-2" / "model" / "DONE").exists()
    saved = json.loads((run / "results.json").read_text())
    assert len(saved["iterations"]) == 3 and "mi_bound" in saved["iterations"][2]
    assert (run / "curves.png").stat().st_size > 0
    import datasets

    ds = datasets.load_from_disk(str(run / "iteration-1" / "samples" / "dataset"))
    assert set(ds.column_names) >= {"id", "query", "statements", "responses"} and len(ds[0]["responses"]) == 2


def test_bad_configs_fail_at_start(tiny_run, capsys):
    tmp_path, config = tiny_run
    with pytest.raises(CmikitError, match="Unknown model alias"):
        parse_config((IterateConfig, SAMIConfig), ["--config", str(config), "--model", "no-such-model"])
    with pytest.raises(ConfigError, match="n_constitutions 1: must be >= 2"):
        parse_config((IterateConfig, SAMIConfig), ["--config", str(config), "--n_constitutions", "1"])
    with pytest.raises(ConfigError, match="one step count per iteration"):
        parse_config((IterateConfig, SAMIConfig), ["--config", str(config), "--iterations", "3"])
    with pytest.raises(ConfigError, match="logprob_reduction"):
        parse_config((IterateConfig, SAMIConfig), ["--config", str(config), "--logprob_reduction", "max"])
    assert sami_main(["iterate", "--config", str(config), "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert sami_main(["frobnicate"]) == 2
    assert sami_main(["--help"]) == 0


def test_shipped_configs_parse(tmp_path):
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1]
    demo_cfg, demo_args = parse_config((IterateConfig, SAMIConfig), ["--config", str(root / "configs/sami/smollm2-demo.yaml")])
    assert demo_cfg.use_lora and demo_args.layout == "shared_prompt"
    for name, model in [("mistral-7b-tldr", "mistral-7b"), ("mistral-7b-hh-released", "mistral-7b"),
                        ("mixtral-8x7b-tldr", "mixtral-8x7b")]:
        # bf16 needs a GPU; everything else must validate here.
        cfg, args = parse_config((IterateConfig, SAMIConfig),
                                 ["--config", str(root / f"configs/sami/{name}.yaml"), "--bf16", "false"])
        assert cfg.model == model and cfg.steps_per_iteration == [2, 4, 6] and args.learning_rate == 5e-7
        assert cfg.train_from == "base" and not cfg.use_lora
    # The typo-matching HH config: 2/4/6 optimiser steps of grad_accum 16, schedule over the data, both quirks.
    hh, hh_args = parse_config((IterateConfig, SAMIConfig),
                               ["--config", str(root / "configs/sami/mistral-7b-hh.yaml"), "--bf16", "false"])
    assert hh.steps_per_iteration == [2, 4, 6] and hh.max_train_items == 2000 and hh.negatives == "random"
    assert hh_args.gradient_accumulation_steps == 16 and hh_args.schedule == "reference"
    assert hh_args.lr_zero_first_step and hh_args.last_microbatch_gradient_only and hh_args.max_grad_norm == 1.0
    assert hh_args.weight_decay == 0.01 and hh_args.weight_decay_params == "all" and hh_args.mask_eos
    kinds = {p.stem: str(load_config_from_file(str(p)).distributed_type)
             for p in (root / "configs/accelerate").glob("*.yaml")}
    assert "DistributedType.FSDP" in kinds.values() and "DistributedType.DEEPSPEED" in kinds.values()


def test_evaluate_and_judge_commands(tiny_run, shared_data, capsys):
    tmp_path, _ = tiny_run
    model, queries = tmp_path / "tiny-model", tmp_path / "queries.jsonl"
    rc = sami_main(["evaluate", "--model", str(model), "--queries", str(queries), "--limit", "2",
                    "--max_new_tokens", "4", "--out_dir", str(tmp_path / "mi"), "--n_constitutions", "3"])
    assert rc == 0
    summary = json.loads((tmp_path / "mi" / "summary.json").read_text())
    assert summary["n_records"] == 2 and {"mi_bound", "log_mean_mi", "accuracy"} <= set(summary["metrics"])
    record = json.loads((tmp_path / "mi" / "records.jsonl").read_text().splitlines()[0])
    assert len(record["logprob_matrix"]) == 3 and len(record["logprob_matrix"][0]) == 3
    files = shared_data / "sami-tldr" / "responses"
    rc = sami_main(["judge", "--candidate", str(files / "instruct-mistral-mistral-constitution-temperature-0.0.json"),
                    "--baseline", str(files / "base-mistral-mistral-constitution-temperature-0.0.json"),
                    "--judge", str(model), "--limit", "2", "--max_new_tokens", "3", "--out_dir", str(tmp_path / "j")])
    assert rc == 0
    out = json.loads((tmp_path / "j" / "win_rates.json").read_text())
    assert out["win_rate"]["n"] == 2 and 0.0 <= out["win_rate"]["mean"] <= 1.0
    assert sami_main(["judge", "--judge", str(model)]) == 2  # no files given
    assert "--candidate" in capsys.readouterr().err
