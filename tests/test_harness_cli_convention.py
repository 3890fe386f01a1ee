"""The one command-line convention (``cmikit.harness.config.parse_config`` on ``trl.TrlParser``) in the four
CLIs, and run identity by an allowlist of the settings that change results (``cmikit.harness.runs``). All
in-process and fast: parsing only, no model loads."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cmikit.harness.config import ConfigError, explicit_keys, parse_config
from cmikit.harness.errors import RunConflictError


@dataclass
class Demo:
    out_dir: str = "runs/x"
    max_queries: int = 20
    quick: bool = False
    progress: bool = True
    n_cal: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# ------------------------------------------------------------------------------------------ the parser
def test_both_spellings_equals_and_negated_booleans():
    cfg = parse_config(Demo, ["--out-dir", "a", "--max_queries=5", "--quick", "--no-progress", "--n-cal", "none",
                              "--seeds", "1", "2"])
    assert (cfg.out_dir, cfg.max_queries, cfg.quick, cfg.progress, cfg.n_cal, cfg.seeds) == ("a", 5, True, False,
                                                                                           None, [1, 2])
    # --no_x for a boolean whose default is false too (it undoes a config file's `quick: true`), last one wins
    assert parse_config(Demo, ["--quick", "--no_quick"]).quick is False
    assert parse_config(Demo, ["--progress=false", "--progress"]).progress is True
    assert explicit_keys(Demo, ["--out-dir", "a", "--no_progress", "--max_queries=3"]) == {
        "out_dir", "progress", "max_queries"}


def test_booleans_are_strict_and_abbreviations_refused():
    with pytest.raises(ConfigError, match="--quick.*'ture' is not a boolean"):
        parse_config(Demo, ["--quick", "ture"])
    with pytest.raises(ConfigError, match="Unknown option --max. Did you mean --max_queries"):
        parse_config(Demo, ["--max", "3"])  # argparse would take it as --max_queries
    with pytest.raises(ConfigError, match="Unknown option --no_prog"):
        parse_config(Demo, ["--no_prog"])


def test_config_file_both_forms_command_line_wins_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("CMIKIT_TEST_ENV", raising=False)
    path = _yaml(tmp_path, """
        max-queries: 7
        quick: true
        seeds: [3, 4]
        env:
          CMIKIT_TEST_ENV: set
    """)
    for argv in (["--config", str(path)], [f"--config={path}"]):
        cfg = parse_config(Demo, [*argv, "--no-quick"])
        assert (cfg.max_queries, cfg.quick, cfg.seeds) == (7, False, [3, 4])
    import os

    assert os.environ["CMIKIT_TEST_ENV"] == "set"
    assert explicit_keys(Demo, [f"--config={path}"]) == {"max_queries", "quick", "seeds", "env"}
    with pytest.raises(ConfigError, match="--config needs a path"):
        parse_config(Demo, ["--config"])
    with pytest.raises(ConfigError, match="--config is given twice"):
        parse_config(Demo, ["--config", str(path), f"--config={path}"])


def test_duplicate_yaml_key_is_refused_naming_the_key_and_both_lines(tmp_path):
    path = _yaml(tmp_path, """
        max_queries: 3
        quick: true
        max_queries: 5
    """)
    with pytest.raises(ConfigError) as err:
        parse_config(Demo, [f"--config={path}"])
    assert "'max_queries'" in str(err.value) and "lines 1 and 3" in str(err.value) and str(path) in str(err.value)


def test_unknown_yaml_key_has_a_hint_and_a_bad_value_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'max_querys' \(value 3\) in .*Did you mean max_queries"):
        parse_config(Demo, ["--config", str(_yaml(tmp_path, "max_querys: 3\n"))])
    with pytest.raises(ConfigError, match="--max_queries.*invalid int value: 'many'"):
        parse_config(Demo, ["--config", str(_yaml(tmp_path, "max_queries: many\n"))])


# ------------------------------------------------------------------------------------------ the four CLIs
def test_sami_takes_both_spellings_and_names_output_dir(tmp_path):
    from cmikit.sami.cli import EvaluateConfig
    from cmikit.sami.config import SAMIConfig
    from cmikit.sami.iterate import IterateConfig

    cfg = parse_config(EvaluateConfig, ["--out-dir", str(tmp_path), "--logprob-reduction=sum", "--mask_eos"])
    assert (cfg.out_dir, cfg.logprob_reduction, cfg.mask_eos) == (str(tmp_path), "sum", True)
    it, args = parse_config((IterateConfig, SAMIConfig), ["--output-dir", str(tmp_path), "--no-drop-identical",
                                                          "--learning-rate", "0.5", "--use_cpu"])
    assert (it.drop_identical, args.learning_rate, args.output_dir) == (False, 0.5, str(tmp_path))
    with pytest.raises(ConfigError, match="Unknown option --out_dir. Did you mean --output_dir"):
        parse_config((IterateConfig, SAMIConfig), ["--out_dir", str(tmp_path)])


def test_sami_iterate_run_conflict_names_output_dir(tmp_path):
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer
    from cmikit.sami.config import SAMIConfig
    from cmikit.sami.iterate import IterateConfig, run_expert_iteration

    model = tmp_path / "model"
    tiny_causal_lm().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"kind": "sami-iterate", "fingerprint": "other", "identity": {}}))
    cfg, args = parse_config((IterateConfig, SAMIConfig), ["--model", str(model), "--output_dir", str(out),
                                                           "--use_cpu", "--n_heldout", "2"])
    with pytest.raises(RunConflictError) as err:
        run_expert_iteration(cfg, args)
    assert "another --output_dir" in str(err.value) and "--out_dir" not in str(err.value)


def test_cip_takes_both_spellings(tmp_path):
    from cmikit.cip.cli import PlayConfig, _explicit_keys, _parse

    opts = _parse(PlayConfig, ["--no-progress", "--max-queries=3", "--tie_break", "random"], "play")
    assert (opts.progress, opts.max_queries, opts.tie_break) == (False, 3, "random")
    assert _explicit_keys(["--out-dir=x", "--no_progress"]) == {"out_dir", "progress"}


def test_dlm_decode_takes_both_spellings_a_config_file_and_typed_fields(tmp_path, capsys):
    from cmikit.decoding.cli import main, parse_bench, parse_generate

    path = _yaml(tmp_path, """
        gen_length: 8
        block-length: 4
        prompt: [abcd, efgh]
    """)
    opts, config = parse_generate([f"--config={path}", "--seek_mode", "false", "--steps", "4", "--chat"])
    assert opts.prompt == ["abcd", "efgh"] and opts.chat is True
    assert (config.gen_length, config.block_length, config.steps, config.seek_mode) == (8, 4, 4, False)
    opts, config = parse_generate(["--prompt", "ab", "--prompt", "cd", "--gen-length", "8", "--no-seek-mode"])
    assert opts.prompt == ["ab", "cd"] and config.seek_mode is False
    bench, parts = parse_bench(["--n_problems", "3", "--no-overhead", "--temperatures", "0"])
    assert bench.n_problems == 3 and parts == ["accuracy", "cache"] and bench.temperatures == [0.0]
    # typed fields replace the old float -> int repair; messages name the dashed flags dlm-decode documents
    assert main(["generate", "--prompt", "ab", "--steps", "3.0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["generate", "--prompt", "ab", "--gen_lenght", "8"]) == 2
    assert "Did you mean --gen-length" in capsys.readouterr().err
    assert main(["train-tiny", "--task_name", "nope"]) == 2  # the training script takes the convention too
    assert "--task-name 'nope'" in capsys.readouterr().err


def test_cmikit_data_takes_both_spellings(capsys):
    from cmikit.harness.main_cli import main

    for flag in ("--no-progress", "--no_progress", "--progress=false"):
        assert main(["data", "fetch", "imagenet", flag]) == 2
        assert "unknown dataset 'imagenet'" in capsys.readouterr().err  # the options parsed
    assert main(["data", "fetch", "awa2", "--no-progres"]) == 2
    assert "Did you mean --no-progress" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- run identity
def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_allowlist_names_fields_of_its_config():
    from cmikit.cip.evaluate import CIP_IDENTITY, CIPConfig
    from cmikit.decoding.cli import BENCH_IDENTITY, BenchOptions
    from cmikit.sami.cli import EVALUATE_IDENTITY, JUDGE_IDENTITY, EvaluateConfig, JudgeConfig
    from cmikit.sami.config import SAMIConfig
    from cmikit.sami.iterate import ITERATE_IDENTITY, IterateConfig

    for keys, fields in ((CIP_IDENTITY, _fields(CIPConfig)), (BENCH_IDENTITY, _fields(BenchOptions)),
                         (EVALUATE_IDENTITY, _fields(EvaluateConfig)), (JUDGE_IDENTITY, _fields(JudgeConfig)),
                         (ITERATE_IDENTITY, _fields(IterateConfig) | _fields(SAMIConfig))):
        assert set(keys) <= fields, set(keys) - fields
        assert not {"out_dir", "output_dir", "overwrite", "out", "progress", "disable_tqdm"} & set(keys)


def test_iterate_identity_ignores_a_new_training_arguments_field_and_refuses_a_listed_change(tmp_path, monkeypatch):
    import cmikit.harness.runs as runs
    import cmikit.sami.config as sami_config
    from cmikit.harness.runs import open_run
    from cmikit.sami.config import SAMIConfig
    from cmikit.sami.iterate import ITERATE_IDENTITY, IterateConfig, run_config

    def settings(*argv: str, args_class=SAMIConfig) -> dict:
        cfg, args = parse_config((IterateConfig, args_class), ["--output_dir", str(tmp_path / "x"), "--use_cpu",
                                                               *argv])
        return run_config(cfg, args)

    out = tmp_path / "run"
    with open_run(out, "sami-iterate", settings(), keys=ITERATE_IDENTITY):
        pass
    first = json.loads((out / "run.json").read_text())
    # A newer transformers adds a TrainingArguments field: it is recorded, and the run still resumes.
    newer = dataclasses.make_dataclass("SAMIConfig", [("brand_new_knob", int, dataclasses.field(default=7))],
                                       bases=(SAMIConfig,))
    monkeypatch.setattr(sami_config, "SAMIConfig", newer)
    new_settings = settings("--brand_new_knob", "9", args_class=newer)
    assert new_settings["brand_new_knob"] == 9
    # ... and so does a new package version.
    monkeypatch.setattr(runs, "package_version", lambda: "99.0")
    with open_run(out, "sami-iterate", new_settings, keys=ITERATE_IDENTITY) as run:
        assert run.resumed
    again = json.loads((out / "run.json").read_text())
    assert again["fingerprint"] == first["fingerprint"] and again["package"] == "99.0"
    # A listed setting (or a changed default of one) refuses.
    with pytest.raises(RunConflictError, match=r"settings.learning_rate: 5e-07 -> 0.001.*--overwrite"):
        with open_run(out, "sami-iterate", settings("--learning_rate", "1e-3"), keys=ITERATE_IDENTITY):
            pass
