"""Issue 16: every file the toolkit reads passes one typed schema (cmikit.harness.schemas) at its boundary.

A table of malformed files and faults, each driven through a real CLI's ``main(argv)`` in-process. Every case
must end with exit code 2, one ``error:`` line naming the file, no traceback, and no file outside the run folder
changed (the inputs, the package's shipped checkpoints). Values that are out of range (NaN, a win of 7, negative
seeds) are refused, never computed with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_testing import snapshot

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "decoding" / "assets"

GOOD_KB = {"questions": ["Is it big?", "Is it red?"], "classes": ["ant", "bus", "rose"],
           "answers": {"ant": [0, 0], "bus": [1, 1], "rose": [0, 1]}}
RESP = {"question": {"0": "What is a cat?", "1": "What is a dog?"},
        "response": {"0": "A small animal.", "1": "A loyal animal."},
        "constitution": {"0": "1. Be brief.", "1": "1. Be brief."}}
SHA = "0" * 64
MANIFEST_FILE = {"path": "a.txt", "url": "https://example.org/a.txt", "size": 1, "sha256": SHA}
MEDIQ_HEADER = "id,question,context,options,answer_idx,facts\n"
MEDIQ_GOOD = ('1,Which drug?,"[\'A 40-year-old man.\']","{\'A\': \'x\', \'B\': \'y\', \'C\': \'z\', \'D\': \'w\'}",'
              'A,"[\'1. fever\']"\n')


def _kb(**change) -> str:
    return json.dumps({**GOOD_KB, **change})


def _th(**change) -> str:
    return json.dumps({"alpha": 0.1, "scores": {"0": [-0.5, -0.2]}, "labels": GOOD_KB["classes"], **change})


def _mediq(bad_row: str | bytes) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {f"mediq/splits/neurology/split0_{r}.csv": MEDIQ_HEADER + MEDIQ_GOOD
                                     for r in ("train", "cal")}
    test = bad_row if isinstance(bad_row, bytes) else (MEDIQ_HEADER + MEDIQ_GOOD + bad_row).encode()
    files["mediq/splits/neurology/split0_test.csv"] = test
    return files


def _manifest(**dataset) -> str:
    return json.dumps({"datasets": {"demo": {"files": [MANIFEST_FILE], **dataset}}})


def _file_entry(**change) -> str:
    return json.dumps({"datasets": {"demo": {"files": [{**MANIFEST_FILE, **change}]}}})


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

CIP_EVAL = ["eval", "--predictor", "table", "--n_cal", "10", "--max_queries", "2", "--n_games", "1",
            "--progress", "false", "--out_dir", "{d}/out"]
CIP_KB = [*CIP_EVAL, "--kb", "{d}/kb.json"]
CIP_MEDIQ = [*CIP_EVAL, "--task", "mediq", "--mediq_dir", "{d}/mediq"]
JUDGED = ["judge", "--judged", "{d}/judged.json", "--out_dir", "{d}/out"]
JUDGE = ["judge", "--candidate", "{d}/cand.json", "--baseline", "{d}/base.json", "--judge", "{d}/model",
         "--out_dir", "{d}/out"]
EVALUATE = ["evaluate", "--model", "{d}/model", "--out_dir", "{d}/out"]
GENERATE = ["generate", "--model", "{d}/m", "--prompt", "abc"]
DATA_LIST = ["data", "list", "--manifest", "{d}/manifest.json"]
MODEL = {"model/config.json": '{"model_type": "llama"}'}

# name: (cli, argv, files written first, words the error line must hold)
CASES: dict[str, tuple[str, list[str], dict[str, str | bytes], list[str]]] = {
    # ---- C-IP knowledge bases
    "kb-class-name-is-a-list": ("cip", CIP_KB, {"kb.json": _kb(classes=[["ant"], "bus", "rose"])},
                                ["kb.json", "classes[0]"]),
    "kb-answer-row-is-a-number": ("cip", CIP_KB, {"kb.json": _kb(answers={"ant": 5, "bus": [1, 1], "rose": [0, 1]})},
                                  ["kb.json", "answers.ant", "5"]),
    "kb-questions-is-a-string": ("cip", CIP_KB, {"kb.json": _kb(questions="Is it big?")},
                                 ["kb.json", "questions", "Is it big?", "list"]),
    "kb-answer-7": ("cip", CIP_KB, {"kb.json": _kb(answers={"ant": [0, 7], "bus": [1, 1], "rose": [0, 1]})},
                    ["kb.json", "answers.ant[1]", "7", "0, 1 or null"]),
    "kb-short-row": ("cip", CIP_KB, {"kb.json": _kb(answers={"ant": [0], "bus": [1, 1], "rose": [0, 1]})},
                     ["kb.json", "'ant'", "2 values"]),
    "kb-repeated-class": ("cip", CIP_KB, {"kb.json": _kb(classes=["ant", "ant", "rose"])},
                          ["kb.json", "classes", "repeat"]),
    "kb-repeated-question": ("cip", CIP_KB, {"kb.json": _kb(questions=["Is it big?", "Is it big?"])},
                             ["kb.json", "questions", "repeat"]),
    "kb-no-answers": ("cip", CIP_KB, {"kb.json": json.dumps({k: v for k, v in GOOD_KB.items() if k != "answers"})},
                      ["kb.json", "the key 'answers' is required"]),
    "kb-top-level-list": ("cip", CIP_KB, {"kb.json": "[]"}, ["kb.json", "found []"]),
    "kb-invalid-json": ("cip", CIP_KB, {"kb.json": '{"questions": [oops]}'}, ["kb.json:1", "not valid JSON"]),
    "kb-latin1": ("cip", CIP_KB, {"kb.json": '{"classes": ["caf\xe9"]}'.encode("latin-1")}, ["kb.json", "UTF-8"]),
    "kb-nan-answer": ("cip", CIP_KB, {"kb.json": _kb().replace("[0, 0]", "[NaN, 0]")}, ["kb.json", "NaN"]),
    "kb-deep-nesting": ("cip", CIP_KB, {"kb.json": "[" * 100_000}, ["kb.json"]),
    "kb-empty-file": ("cip", CIP_KB, {"kb.json": ""}, ["kb.json", "not valid JSON"]),
    "kb-no-classes": ("cip", CIP_KB, {"kb.json": _kb(classes=[], answers={})}, ["kb.json", "classes", "at least 1"]),
    "kb-answers-is-a-list": ("cip", CIP_KB, {"kb.json": _kb(answers=[[0, 0]])}, ["kb.json", "answers", "dict"]),
    "kb-source-is-a-number": ("cip", CIP_KB, {"kb.json": _kb(source=3)}, ["kb.json", "source"]),
    "kb-class-without-row": ("cip", CIP_KB, {"kb.json": _kb(answers={"ant": [0, 0], "bus": [1, 1]})},
                             ["kb.json", "rose", "no row"]),
    "kb-blank-question": ("cip", CIP_KB, {"kb.json": _kb(questions=["Is it big?", "  "])},
                          ["kb.json", "questions[1]", "blank"]),
    "kb-answer-as-text": ("cip", CIP_KB, {"kb.json": _kb(answers={"ant": ["yes", 0], "bus": [1, 1], "rose": [0, 1]})},
                          ["kb.json", "answers.ant[0]", "yes"]),
    # ---- MediQ split files (CSV rows whose list/dict cells are literals)
    "mediq-bracket-bomb": ("cip", CIP_MEDIQ, _mediq('2,Q?,"[\'a\']","{\'A\': \'x\', \'B\': \'y\'}",A,"'
                                                    + "[" * 100_000 + '"\n'), ["split0_test.csv:3", "facts"]),
    "mediq-answer-not-an-option": ("cip", CIP_MEDIQ, _mediq('2,Q?,"[\'a\']","{\'A\': \'x\', \'B\': \'y\'}",E,'
                                                            '"[\'f\']"\n'), ["split0_test.csv:3", "answer_idx"]),
    "mediq-options-a-list": ("cip", CIP_MEDIQ, _mediq('2,Q?,"[\'a\']","[\'x\', \'y\']",A,"[\'f\']"\n'),
                             ["split0_test.csv:3", "options"]),
    "mediq-broken-literal": ("cip", CIP_MEDIQ, _mediq('2,Q?,"[\'a\']","{\'A\': \'x\', \'B\'",A,"[\'f\']"\n'),
                             ["split0_test.csv:3", "options"]),
    "mediq-missing-column": ("cip", CIP_MEDIQ, _mediq(b"id,question,context,options,answer_idx\n1,Q?,[],{},A\n"),
                             ["split0_test.csv", "facts"]),
    "mediq-latin1": ("cip", CIP_MEDIQ, _mediq((MEDIQ_HEADER + MEDIQ_GOOD).encode() + "2,caf\xe9\n".encode("latin-1")),
                     ["split0_test.csv", "UTF-8"]),
    "mediq-facts-a-number": ("cip", CIP_MEDIQ, _mediq('2,Q?,"[\'a\']","{\'A\': \'x\', \'B\': \'y\'}",A,5\n'),
                             ["split0_test.csv:3", "facts"]),
    # ---- YAML configs
    "yaml-latin1": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"], {"c.yaml": "noun: caf\xe9\n".encode("latin-1")},
                    ["c.yaml", "UTF-8"]),
    "yaml-alias-bomb-unknown-key": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"], {"c.yaml": BOMB},
                                    ["c.yaml"]),
    "yaml-alias-bomb-known-key": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"],
                                  {"c.yaml": BOMB.replace("i: &i", "seeds: &i")}, ["c.yaml"]),
    "yaml-top-level-list": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"], {"c.yaml": "- 1\n- 2\n"},
                            ["c.yaml", "mapping"]),
    "yaml-invalid": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"], {"c.yaml": "a: [1, 2\nb: 3\n"},
                     ["c.yaml", "not valid YAML"]),
    "yaml-number-key": ("cip", [*CIP_EVAL, "--config", "{d}/c.yaml"], {"c.yaml": "1: 2\n"}, ["c.yaml"]),
    # ---- released judge outputs: [win, len_baseline, len_candidate]
    "judged-nan-length": ("sami", JUDGED, {"judged.json": "[[1, 20, 30], [0, NaN, 3]]"}, ["judged.json", "NaN"]),
    "judged-win-7": ("sami", JUDGED, {"judged.json": "[[1, 20, 30], [7, 2, 3]]"}, ["judged.json", "[1][0]", "0.5"]),
    "judged-win-text": ("sami", JUDGED, {"judged.json": '[[1, 20, 30], ["A", 2, 3]]'}, ["judged.json", "[1][0]"]),
    "judged-two-values": ("sami", JUDGED, {"judged.json": "[[1, 20, 30], [1, 2]]"}, ["judged.json", "[1]"]),
    "judged-empty": ("sami", JUDGED, {"judged.json": "[]"}, ["judged.json", "at least 1"]),
    "judged-object": ("sami", JUDGED, {"judged.json": '{"win": 1}'}, ["judged.json", "list"]),
    "judged-negative-length": ("sami", JUDGED, {"judged.json": "[[1, -20, 30]]"}, ["judged.json", "[0][1]", "-20"]),
    "judged-infinity": ("sami", JUDGED, {"judged.json": "[[1, Infinity, 30]]"}, ["judged.json", "Infinity"]),
    # ---- response files (reference format or a list of items)
    "responses-question-a-number": ("sami", JUDGE, {**MODEL, "cand.json": json.dumps(
        {**RESP, "question": {"0": 5, "1": "b"}}), "base.json": json.dumps(RESP)}, ["cand.json", "question.0", "5"]),
    "responses-response-a-list": ("sami", JUDGE, {**MODEL, "cand.json": json.dumps(RESP), "base.json": json.dumps(
        {**RESP, "response": ["a", "b"]})}, ["base.json", "response"]),
    "responses-no-response": ("sami", JUDGE, {**MODEL, "cand.json": json.dumps(
        {"question": RESP["question"]}), "base.json": json.dumps(RESP)}, ["cand.json", "the key 'response' is required"]),
    "responses-item-without-id": ("sami", JUDGE, {**MODEL, "cand.json": json.dumps(
        [{"query": "q", "response": "r"}]), "base.json": json.dumps(RESP)}, ["cand.json", "at [0]: the key 'id' is required"]),
    "responses-repeated-ids": ("sami", JUDGE, {**MODEL, "cand.json": json.dumps(
        [{"id": 1, "query": "q", "response": "r"}, {"id": 1, "query": "q", "response": "s"}]),
        "base.json": json.dumps(RESP)}, ["cand.json", "repeat"]),
    "responses-latin1": ("sami", JUDGE, {**MODEL, "cand.json": '{"question": {"0": "caf\xe9"}}'.encode("latin-1"),
                                         "base.json": json.dumps(RESP)}, ["cand.json", "UTF-8"]),
    "responses-empty-list": ("sami", JUDGE, {**MODEL, "cand.json": "[]", "base.json": json.dumps(RESP)},
                             ["cand.json", "at least 1"]),
    # ---- query files
    "queries-repeated-ids-jsonl": ("sami", [*EVALUATE, "--queries", "{d}/q.jsonl"], {**MODEL, "q.jsonl": (
        '{"id": "a", "query": "x?"}\n{"id": "a", "query": "y?"}\n')}, ["q.jsonl", "repeat", '"a"']),
    "queries-queries-is-a-string": ("sami", [*EVALUATE, "--queries", "{d}/q.json"], {**MODEL, "q.json": json.dumps(
        {"queries": "Is it big?"})}, ["q.json", "queries"]),
    "queries-line-is-a-number": ("sami", [*EVALUATE, "--queries", "{d}/q.jsonl"], {**MODEL, "q.jsonl": (
        '{"query": "x?"}\n42\n')}, ["q.jsonl:2", "42"]),
    "queries-repeated-ids-json": ("sami", [*EVALUATE, "--queries", "{d}/q.json"], {**MODEL, "q.json": json.dumps(
        [{"id": 1, "query": "x?"}, {"id": 1, "query": "y?"}])}, ["q.json", "repeat"]),
    "queries-mixed-list": ("sami", [*EVALUATE, "--queries", "{d}/q.json"], {**MODEL, "q.json": json.dumps(
        ["x?", 5])}, ["q.json", "[1]"]),
    "queries-repeated-ids-csv": ("sami", [*EVALUATE, "--queries", "{d}/q.csv"], {**MODEL, "q.csv": (
        "id,query\n1,x?\n1,y?\n")}, ["q.csv", "repeat"]),
    # ---- constitution files
    "constitution-empty-positive": ("sami", [*EVALUATE, "--constitutions", "{d}/c.json"], {**MODEL, "c.json": (
        json.dumps({"positive": "", "negative": "1. Be rude."}))}, ["c.json", "positive"]),
    "constitution-positive-a-number": ("sami", [*EVALUATE, "--constitutions", "{d}/c.json"], {**MODEL, "c.json": (
        json.dumps({"positive": 1, "negative": "1. Be rude."}))}, ["c.json", "positive"]),
    "constitution-a-list": ("sami", [*EVALUATE, "--constitutions", "{d}/c.json"], {**MODEL, "c.json": "[]"},
                            ["c.json"]),
    "constitution-blank-negative": ("sami", [*EVALUATE, "--constitutions", "{d}/c.json"], {**MODEL, "c.json": (
        json.dumps({"positive": "1. Be kind.", "negative": "   "}))}, ["c.json", "negative", "blank"]),
    "constitution-empty-identifier": ("sami", [*EVALUATE, "--constitutions", "{d}/c.json"], {**MODEL, "c.json": (
        json.dumps({"positive": "1. Be kind.", "negative": "1. Be rude.", "identifiers": {"positive": [""]}}))},
        ["c.json", "identifiers.positive[0]"]),
    # ---- model folders: config.json and weights, before transformers reads them
    "model-config-invalid-json": ("dlm-decode", GENERATE, {"m/config.json": "{oops"}, ["config.json", "JSON"]),
    "model-config-a-list": ("dlm-decode", GENERATE, {"m/config.json": "[]"}, ["config.json"]),
    "model-pickled-weights-only": ("dlm-decode", GENERATE, {"m/config.json": "{}", "m/pytorch_model.bin": b"\x80\x04"},
                                   ["pytorch_model.bin", "safetensors"]),
    "model-junk-safetensors": ("dlm-decode", GENERATE, {"m/config.json": "{}", "m/model.safetensors": b"junk" * 10},
                               ["model.safetensors"]),
    "model-config-auto-map-a-list": ("sami", [*EVALUATE[:1], "--model", "{d}/m", "--out_dir", "{d}/out"],
                                     {"m/config.json": '{"auto_map": [1]}'}, ["config.json", "auto_map"]),
    "adapter-pickled-weights-only": ("sami", [*EVALUATE, "--adapter", "{d}/ad"], {**MODEL, "ad/adapter_config.json": (
        '{"peft_type": "LORA"}'), "ad/adapter_model.bin": b"\x80\x04"}, ["--adapter", "adapter_model.bin"]),
    "adapter-config-a-list": ("sami", [*EVALUATE, "--adapter", "{d}/ad"], {**MODEL, "ad/adapter_config.json": "[]"},
                              ["--adapter", "adapter_config.json"]),
    # ---- dataset manifests: names and paths stay inside the data cache
    "manifest-dotdot-name": ("cmikit", DATA_LIST, {"manifest.json": json.dumps(
        {"datasets": {"../../x": {"files": [MANIFEST_FILE]}}})}, ["manifest.json", "../../x"]),
    "manifest-dotdot-path": ("cmikit", DATA_LIST, {"manifest.json": _file_entry(path="../escape")},
                             ["manifest.json", "path", "../escape"]),
    "manifest-absolute-path": ("cmikit", DATA_LIST, {"manifest.json": _file_entry(path="/etc/passwd")},
                               ["manifest.json", "/etc/passwd"]),
    "manifest-negative-size": ("cmikit", DATA_LIST, {"manifest.json": _file_entry(size=-1)},
                               ["manifest.json", "size"]),
    "manifest-short-sha": ("cmikit", DATA_LIST, {"manifest.json": _file_entry(sha256="abc")},
                           ["manifest.json", "sha256"]),
    "manifest-a-list": ("cmikit", DATA_LIST, {"manifest.json": "[]"}, ["manifest.json"]),
    "manifest-file-url": ("cmikit", DATA_LIST, {"manifest.json": _file_entry(url="file:///etc/passwd")},
                          ["manifest.json", "url"]),
    # ---- conformal thresholds files
    "thresholds-alpha-2": ("cip", [*CIP_KB, "--thresholds", "{d}/th.json"], {"kb.json": _kb(), "th.json": _th(
        alpha=2)}, ["th.json", "alpha", "2"]),
    "thresholds-nan-score": ("cip", [*CIP_KB, "--thresholds", "{d}/th.json"], {"kb.json": _kb(), "th.json": _th(
        scores={"0": [-0.5, "NaN"]}).replace('"NaN"', "NaN")}, ["th.json", "NaN"]),
    "thresholds-score-above-0": ("cip", [*CIP_KB, "--thresholds", "{d}/th.json"], {"kb.json": _kb(), "th.json": _th(
        scores={"0": [3.5]})}, ["th.json", "scores.0[0]", "3.5"]),
    "thresholds-length-not-a-number": ("cip", [*CIP_KB, "--thresholds", "{d}/th.json"], {"kb.json": _kb(),
                                       "th.json": _th(scores={"k": [-0.5]})}, ["th.json", "scores", "history length"]),
    # ---- run folders
    "run-json-a-list": ("cip", CIP_EVAL, {"out/run.json": "[]", "out/records.jsonl": ""}, ["run.json", "mv"]),
    "run-json-foreign-overwrite": ("cip", [*CIP_EVAL, "--overwrite", "true"], {
        "out/run.json": '{"tool": "other"}', "out/results.csv": "a,b\n1,2\n"}, ["run.json"]),
    # ---- ranges of options (seeds >= 0, counts >= 1) and outputs that cannot be written
    "cip-negative-seed": ("cip", [*CIP_EVAL, "--seeds", "-1"], {}, ["--seeds", "-1"]),
    "sami-judge-negative-seed": ("sami", [*JUDGE, "--seed", "-1"], {**MODEL, "cand.json": json.dumps(RESP),
                                                                     "base.json": json.dumps(RESP)}, ["--seed", "-1"]),
    "train-tiny-batch-size-0": ("dlm-decode", ["train-tiny", "--batch-size", "0", "--output", "{d}/out"], {},
                                ["--batch-size", "0"]),
    "train-tiny-negative-steps": ("dlm-decode", ["train-tiny", "--steps", "-3", "--output", "{d}/out"], {},
                                  ["--steps", "-3"]),
    "train-tiny-into-the-package": ("dlm-decode", ["train-tiny", "--steps", "1", "--output",
                                                   str(ASSETS / "tiny-copy-dlm")], {}, ["--output", "package"]),
    "train-tiny-into-a-foreign-folder": ("dlm-decode", ["train-tiny", "--steps", "1", "--output", "{d}/mine"],
                                         {"mine/config.json": '{"mine": true}'}, ["--output", "mine", "train_log"]),
    "play-transcript-unwritable": ("cip", ["play", "--transcript", "{d}/file.txt/t.json"], {"file.txt": "x"},
                                   ["--transcript", "file.txt"]),
}


def _main(cli: str) -> Callable[[list[str]], int]:
    if cli == "cip":
        from cmikit.cip.cli import main
    elif cli == "sami":
        from cmikit.sami.cli import main
    elif cli == "dlm-decode":
        from cmikit.decoding.cli import main
    else:
        from cmikit.harness.main_cli import main
    return main


def _write(folder: Path, files: dict[str, str | bytes]) -> None:
    for rel, body in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body if isinstance(body, bytes) else body.encode())


def _outside(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(folder).items() if not k.startswith("out/")}


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_ends_in_one_line(name, tmp_path, capsys, monkeypatch):
    cli, argv, files, culprits = CASES[name]
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "case"
    d.mkdir()
    _write(d, files)
    before, assets = _outside(d), snapshot(ASSETS)
    code = _main(cli)([a.replace("{d}", str(d)) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert code == 2, (code, captured.err[-2000:])
    assert "Traceback" not in captured.err
    assert lines and lines[-1].startswith("error: ") and len(lines) <= 2, captured.err[-2000:]
    assert len(lines[-1]) < 700, len(lines[-1])  # values are cut: an alias bomb prints no megabytes
    for word in culprits:
        assert word in lines[-1], (word, lines[-1])
    assert _outside(d) == before  # inputs (and a foreign run folder's files) unchanged
    assert snapshot(ASSETS) == assets  # the shipped checkpoints too
    if name == "run-json-foreign-overwrite":
        assert (d / "out" / "results.csv").read_text() == "a,b\n1,2\n"


# ------------------------------------------------------------------------- readers called directly
def test_schema_error_names_path_value_and_rule(tmp_path):
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import JudgedRows, load_json

    path = tmp_path / "j.json"
    path.write_text(json.dumps([[1, 2, 3], [0.5, 4, 5], [1, 2, float("nan")]]).replace("NaN", "1e999"))
    with pytest.raises(DataFileError) as err:
        load_json(path, JudgedRows, "judged rows")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "[2][2]" in message and "finite" in message


def test_long_values_are_cut(tmp_path):
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import KnowledgeBaseFile, load_json

    path = tmp_path / "kb.json"
    path.write_text(json.dumps({**GOOD_KB, "classes": "x" * 10_000}))
    with pytest.raises(DataFileError) as err:
        load_json(path, KnowledgeBaseFile, "knowledge base")
    assert len(str(err.value)) < len(str(path)) + 200 and "..." in str(err.value)


def test_released_win_rates_accepts_good_rows_and_half_wins(tmp_path):
    from cmikit.sami.judge import released_win_rates

    path = tmp_path / "j.json"
    path.write_text("[[1, 20, 30], [0.5, 2, 3], [0, 5, 1]]")
    assert released_win_rates(path)["win_rate"]["mean"] == pytest.approx(0.5)
