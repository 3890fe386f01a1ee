"""LLaDA and Dream on transformers' own classes: released formats mapped, no remote code, the cache on both.

The tiny checkpoints are written in the *released* formats (config.json with the released keys, shrunk;
parameter names as in the released weights; random values; two safetensors shards); every module their
``auto_map`` names is a tripwire that records its import and raises.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from cmikit.decoding import DiffusionGenerationConfig, adapt, generate
from cmikit.decoding.cli import main as dlm_decode
from cmikit.decoding.config import STRATEGIES
from cmikit.harness.models import ModelLoadError, load_model
from cmikit.harness.native_dlm import NativeFormatError, native_config, native_name
from cmikit.harness.testing import REMOTE_CODE_FILES, left_pad, padded_position_ids, tiny_released_checkpoint

FORMATS = ("llada", "dream")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread runs them several times faster than many on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return {fmt: tiny_released_checkpoint(fmt, tmp_path_factory.mktemp(fmt), seed=i) for i, fmt in enumerate(FORMATS)}


@pytest.fixture(scope="module")
def loaded(released):
    return {fmt: load_model(str(folder), device_map="cpu") for fmt, folder in released.items()}


def _raw_weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


# -- an independent forward, from the architecture's equations and the released parameter names -------------------
def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotary(x, positions, theta):
    """Rotate each pair (i, i + d/2) of every head by position * theta^(-2i/d) (the half-split convention)."""
    dim = x.shape[-1]
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions[:, None].double() * inv[None, :]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def independent_logits(fmt: str, folder, tokens: list[int]) -> torch.Tensor:
    """Logits ``[L, V]`` of one unpadded sequence: bidirectional attention, no mask at all (positions 0..L-1),
    computed in float64 from the released parameter names (so the comparison measures the native model's error)."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.double() for k, v in _raw_weights(folder).items()}
    if fmt == "llada":
        d, heads, kv, layers = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["n_layers"]
        names = {"emb": "model.transformer.wte.weight", "final": "model.transformer.ln_f.weight",
                 "head": "model.transformer.ff_out.weight"}
        block = {"ln1": "attn_norm", "ln2": "ff_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
                 "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
        prefix = "model.transformer.blocks.{}."
    else:
        d, heads, kv, layers = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                cfg["num_hidden_layers"])
        names = {"emb": "model.embed_tokens.weight", "final": "model.norm.weight", "head": "lm_head.weight"}
        block = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm", "q": "self_attn.q_proj",
                 "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj",
                 "up": "mlp.up_proj", "down": "mlp.down_proj"}
        prefix = "model.layers.{}."
    eps, theta, head_dim = cfg["rms_norm_eps"], cfg["rope_theta"], d // heads
    ids = torch.tensor(tokens)
    positions = torch.arange(len(tokens))
    h = w[names["emb"]][ids]

    def linear(x, name):
        out = x @ w[name + ".weight"].T
        return out + w[name + ".bias"] if name + ".bias" in w else out

    for i in range(layers):
        p = {k: prefix.format(i) + v for k, v in block.items()}
        x = _rms(h, w[p["ln1"] + ".weight"], eps)
        q = linear(x, p["q"]).view(-1, heads, head_dim).transpose(0, 1)
        k = linear(x, p["k"]).view(-1, kv, head_dim).transpose(0, 1)
        v = linear(x, p["v"]).view(-1, kv, head_dim).transpose(0, 1)
        q, k = _rotary(q, positions, theta), _rotary(k, positions, theta)
        group = heads // kv  # query head j reads key/value head j // group
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        attn = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, dim=-1) @ v  # every key visible
        h = h + linear(attn.transpose(0, 1).reshape(-1, d), p["o"])
        x = _rms(h, w[p["ln2"] + ".weight"], eps)
        h = h + linear(torch.nn.functional.silu(linear(x, p["gate"])) * linear(x, p["up"]), p["down"])
    return (_rms(h, w[names["final"]], eps) @ w[names["head"]].T).float()


@pytest.mark.parametrize("fmt", FORMATS)
def test_native_model_is_transformers_own_class_with_released_settings(loaded, released, fmt):
    model, tokenizer = loaded[fmt]
    expected = {"llada": "LlamaForCausalLM", "dream": "Qwen2ForCausalLM"}[fmt]
    assert type(model).__name__ == expected and type(model).__module__.startswith("transformers.models.")
    raw = json.loads((released[fmt] / "config.json").read_text())
    assert model.config.mask_token_id == raw["mask_token_id"] == tokenizer.mask_token_id
    assert model.config.shift_logits is (fmt == "dream") and model.config.is_causal is False
    assert all(m.is_causal is False for m in model.modules() if hasattr(m, "is_causal"))
    adapter = adapt(model, tokenizer)
    assert adapter.kind == f"{fmt}-native" and adapter.attention == "4d" and adapter.shift_logits is (fmt == "dream")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_native_logits_equal_an_independent_forward(loaded, released, fmt, attn):
    """Target: max |Δlogit| <= 1e-5 at fp32, plain calls (config.is_causal=False alone) and left padding."""
    model, _ = loaded[fmt]
    model.config._attn_implementation = attn
    try:
        rows = [[9, 20, 33, 41, 12, 3, 3, 3, 55], [14, 15, 3, 3, 60, 61]]
        expected = [independent_logits(fmt, released[fmt], row) for row in rows]
        with torch.no_grad():
            plain = model(input_ids=torch.tensor([rows[0]])).logits[0]
            width = max(map(len, rows))
            ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            padded = model(input_ids=ids, attention_mask=mask, position_ids=padded_position_ids(mask, ids)).logits
        diffs = [(plain - expected[0]).abs().max().item()] + [
            (padded[row, width - len(rows[row]):] - exp).abs().max().item() for row, exp in enumerate(expected)]
        print(f"{fmt} {attn}: max |dlogit| = {max(diffs):.2e} (max |logit| {expected[0].abs().max().item():.1f})")
        assert max(diffs) <= 1e-5
        assert expected[0].abs().max().item() > 1.0  # logits of a useful size, not vanishing ones
        # bidirectional: the first position's logits depend on the last token
        changed = torch.tensor([rows[0][:-1] + [56]])
        with torch.no_grad():
            assert (model(input_ids=changed).logits[0, 0] - plain[0]).abs().max().item() > 1e-3
    finally:
        model.config._attn_implementation = "sdpa"


def _patch_remote_loader(monkeypatch, replacement) -> None:
    """Replace transformers' remote-code loader everywhere it was imported by name (the auto classes hold their
    own reference)."""
    import importlib

    for name in ("auto_factory", "configuration_auto", "modeling_auto", "tokenization_auto"):
        importlib.import_module(f"transformers.models.auto.{name}")  # loaded before patching, not after
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers") and hasattr(module, "get_class_from_dynamic_module"):
            monkeypatch.setattr(module, "get_class_from_dynamic_module", replacement)


def test_no_auto_map_class_is_imported_on_the_default_path(tmp_path, monkeypatch):
    """Target: 0 remote-code executions. Any import of an auto_map module trips its tripwire file; transformers'
    dynamic-module loader is also made to fail loudly."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"remote code requested: {args}")

    _patch_remote_loader(monkeypatch, forbidden)
    # Modules imported before this test (e.g. the plugin's custom_generate folder, which transformers imports as
    # `transformers_modules.decoding...` in another test) are not this path's doing: look only at new ones.
    before = set(sys.modules)
    for fmt in FORMATS:
        folder = tiny_released_checkpoint(fmt, tmp_path / fmt)
        model, tokenizer = load_model(str(folder), device_map="cpu")
        generate(adapt(model, tokenizer), torch.tensor([[9, 10, 11]]),
                 DiffusionGenerationConfig(gen_length=4, block_length=2, steps=4, cache="dual"))
        assert not (folder / "REMOTE_CODE_IMPORTED").exists()
        dst = tmp_path / f"{fmt}-native"
        assert dlm_decode(["convert", str(folder), str(dst)]) == 0
        load_model(str(dst), device_map="cpu")
        assert not (folder / "REMOTE_CODE_IMPORTED").exists()
    loaded_modules = [name for name in set(sys.modules) - before if "transformers_modules" in name
                      or any(name.endswith(m) for files in REMOTE_CODE_FILES.values() for m in files)]
    assert loaded_modules == []


def test_tripwire_fires_when_remote_code_is_imported(released):
    """The tripwire of the test above works: importing an auto_map module records it and raises."""
    import importlib.util

    folder = released["llada"]
    spec = importlib.util.spec_from_file_location("tripwire_probe", folder / "modeling_llada.py")
    with pytest.raises(ImportError, match="remote code"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    marker = folder / "REMOTE_CODE_IMPORTED"
    assert marker.read_text().strip() == "modeling_llada"
    marker.unlink()




def _config(strategy: str, **kw) -> DiffusionGenerationConfig:
    base = dict(gen_length=12, block_length=4, steps=12, strategy=strategy, threshold=0.05, entropy_bound=2.0,
                ccd_entropy_threshold=3.5, warmup_steps=2, temperature=0.0, seed=0)
    base.update(kw)
    return DiffusionGenerationConfig(**base)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_strategy_token_identical_with_cache_refresh_1(loaded, fmt, strategy):
    """Target: native no-cache == native with cache_refresh=1 (prefix and dual), every strategy, left padding."""
    model, tokenizer = loaded[fmt]
    adapter = adapt(model, tokenizer)
    ids, mask = left_pad([[9, 20, 33, 41, 12, 14], [15, 16], [40, 41, 42, 43]])
    plain = generate(adapter, ids, _config(strategy), attention_mask=mask)
    assert not (plain.generated == adapter.mask_token_id).any()
    for cache in ("prefix", "dual"):
        out = generate(adapter, ids, _config(strategy, cache=cache, cache_refresh=1), attention_mask=mask)
        assert out.sequences.tolist() == plain.sequences.tolist(), cache


@pytest.mark.parametrize("fmt", FORMATS)
def test_dual_cache_runs_on_both_formats_with_guidance(loaded, fmt):
    model, tokenizer = loaded[fmt]
    adapter = adapt(model, tokenizer)
    ids, mask = left_pad([[9, 20, 33, 41, 12, 14], [15, 16]])
    for kw in ({"strategy": "low_confidence"}, {"strategy": "ccd"}, {"strategy": "low_confidence", "cfg_scale": 1.0}):
        plain = generate(adapter, ids, _config(**kw), attention_mask=mask)
        dual = generate(adapter, ids, _config(**kw, cache="dual"), attention_mask=mask)
        assert not (dual.generated == adapter.mask_token_id).any()
        # The cache ran the block only (CCD's adaptive budget may take a different number of steps).
        assert dual.model_tokens < plain.model_tokens and (kw["strategy"] == "ccd" or dual.nfe == plain.nfe)


@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_folder_loads_without_remote_code_and_gives_the_same_logits(loaded, released, tmp_path, fmt,
                                                                               capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dst = tmp_path / "native"
    assert dlm_decode(["convert", str(released[fmt]), str(dst)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == fmt and summary["shards"] == 2
    assert not list(dst.glob("*.py"))
    config = json.loads((dst / "config.json").read_text())
    assert "auto_map" not in config and config["is_causal"] is False
    assert "auto_map" not in json.loads((dst / "tokenizer_config.json").read_text())
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    raw = _raw_weights(released[fmt])
    assert sorted(index["weight_map"]) == sorted(native_name(k, fmt) for k in raw)
    converted = _raw_weights(dst)
    assert all(torch.equal(converted[native_name(k, fmt)], v) for k, v in raw.items())  # bit-identical values

    plain = AutoModelForCausalLM.from_pretrained(dst).eval()  # plain from_pretrained, trust_remote_code off
    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert tokenizer.mask_token_id == plain.config.mask_token_id
    native, _ = loaded[fmt]
    ids = torch.tensor([[9, 20, 33, 41, 12, 3, 3, 55]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, native(input_ids=ids).logits)
    assert adapt(*load_model(str(dst), device_map="cpu")).kind == f"{fmt}-native"


def test_convert_refuses_what_it_cannot_map(released, tmp_path):
    assert dlm_decode(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    bad = tmp_path / "alibi"
    bad.mkdir()
    cfg = json.loads((released["llada"] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "alibi": True}))
    with pytest.raises(NativeFormatError, match="alibi=True.*trust_remote_code"):
        native_config(json.loads((bad / "config.json").read_text()))
    assert dlm_decode(["convert", str(bad), str(tmp_path / "out")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert dlm_decode(["convert", str(released["dream"]), str(tmp_path / "full")]) == 2  # non-empty, no --overwrite


def test_registry_aliases_load_natively_by_default_and_say_so_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="config.json of GSAI-ML/LLaDA-8B-Instruct") as err:
        load_model("llada-8b-instruct")
    assert "trust_remote_code" not in str(err.value) and "dlm-decode convert" in str(err.value)


def test_gpu_check_native_throughput_dry_run(tmp_path):
    """scripts/gpu_check.sh's LLaDA/Dream section, on tiny shapes on the CPU: every arm runs, and the caches run
    fewer positions through the model (machine-independent counts; the GPU run reports the tokens/s)."""
    from cmikit.decoding.bench_native import MODES
    from cmikit.decoding.bench_native import main as bench_native

    out = tmp_path / "native.json"
    assert bench_native(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for fmt, cls in (("llada", "LlamaForCausalLM"), ("dream", "Qwen2ForCausalLM")):
        assert report[fmt]["class"] == cls
        for batch in ("batch_1", "batch_2"):
            rows = report[fmt]["results"][batch]
            assert set(rows) == set(MODES) and all(rows[m]["tokens_per_second"] > 0 for m in MODES)
            assert rows["none"]["nfe"] == rows["prefix"]["nfe"] == rows["dual"]["nfe"] == 16
            positions = [rows[m]["positions_per_sequence"] for m in MODES]
            assert positions[0] > positions[1] > positions[2]


def test_remote_code_path_stays_available_behind_the_flag(released, monkeypatch):
    """trust_remote_code=True hands the folder to transformers' remote-code loader (stopped here before it runs)."""
    class Reached(Exception):
        pass

    def reached(class_reference, *args, **kwargs):
        raise Reached(class_reference)

    _patch_remote_loader(monkeypatch, reached)
    with pytest.raises(Reached, match="configuration_llada.LLaDAConfig"):
        load_model(str(released["llada"]), trust_remote_code=True, device_map="cpu")


def test_a_parameter_that_does_not_map_is_an_error_not_a_random_weight(tmp_path):
    from safetensors.torch import save_file

    folder = tiny_released_checkpoint("llada", tmp_path / "llada", layers=1)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["model.transformer.blocks.0.up_proj.weight"]
    tensors = load_file(str(shard))
    tensors["model.transformer.blocks.0.mystery_proj.weight"] = tensors.pop("model.transformer.blocks.0.up_proj.weight")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index["weight_map"]["model.transformer.blocks.0.mystery_proj.weight"] = shard.name
    del index["weight_map"]["model.transformer.blocks.0.up_proj.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="did not map.*up_proj"):
        load_model(str(folder), device_map="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_peft_applies_to_the_native_model(loaded, fmt):
    """The native class takes a LoRA on its standard module names (remote code names differ per model)."""
    from peft import LoraConfig, get_peft_model

    model, _ = loaded[fmt]
    ids = torch.tensor([[9, 20, 33, 41, 12]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "gate_proj"]))
    try:
        assert lora.get_nb_trainable_parameters()[0] > 0
        with torch.no_grad():
            assert torch.allclose(lora(input_ids=ids).logits, before, atol=1e-6)  # LoRA starts as the identity
    finally:
        lora.unload()
