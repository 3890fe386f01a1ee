"""Model loading: references, errors a user can act on, the embedded model's preparation and cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from cmikit.harness import embedded
from cmikit.harness.models import MODEL_REGISTRY, ModelLoadError, load_model, resolve_model_ref
from cmikit.harness.testing import (
    bidirectional_attention_mask,
    tiny_causal_lm,
    tiny_dream_like,
    tiny_llada_like,
)


def test_registry_has_paper_models():
    for alias in ["smollm2-135m-instruct", "llada-8b-instruct", "dream-7b-instruct", "mistral-7b", "mixtral-8x7b"]:
        assert alias in MODEL_REGISTRY
    assert MODEL_REGISTRY["llada-8b-instruct"].trust_remote_code
    assert resolve_model_ref("smollm2-135m-instruct").kind == "embedded"
    assert resolve_model_ref("mistral-7b").path == "mistralai/Mistral-7B-v0.1"


def test_unknown_alias_lists_known_ones():
    with pytest.raises(ModelLoadError) as err:
        resolve_model_ref("smollm-9000")
    assert "smollm2-135m-instruct" in str(err.value) and "llada-8b-instruct" in str(err.value)


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_ref(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_ref(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_ref(str(tmp_path))


def test_remote_code_model_needs_flag(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "mystery", "auto_map": {"AutoModel": "modeling_mystery.MysteryModel"}}))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(str(tmp_path))
    # a released LLaDA / Dream folder loads natively instead (tests/test_native_dlm.py); an incomplete one says so
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llada", "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"}}))
    with pytest.raises(ModelLoadError, match="lacks d_model"):
        load_model(str(tmp_path))


def test_corrupt_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(ModelLoadError, match="GGUF"):
        load_model(str(bad))
    with pytest.raises(embedded.EmbeddedModelError, match="checksum mismatch"):
        embedded.verify_gguf(bad)


def test_quantisation_without_bitsandbytes_is_clear(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ModelLoadError, match="bitsandbytes"):
        load_model("smollm2-135m-instruct", load_in_4bit=True)


def test_bad_dtype_named():
    with pytest.raises(ModelLoadError, match="fp64.*allowed"):
        load_model("smollm2-135m-instruct", dtype="fp64")


def test_local_folder_roundtrip_with_peft_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from cmikit.harness.testing import tiny_tokenizer

    base = tiny_causal_lm()
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(tiny_causal_lm(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    model, tok = load_model(str(tmp_path / "base"), dtype="fp32", device_map="cpu", adapter=str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
    assert tok.pad_token is not None


# ---------------------------------------------------------------------------------- embedded preparation
def test_prepare_is_locked_and_atomic(tmp_path, monkeypatch):
    """Two concurrent preparations convert once; a folder without the READY marker is never used."""
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path))
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(embedded, "GGUF_SHA256", embedded.sha256_file(fake_gguf))
    monkeypatch.setattr(embedded.verify_gguf, "__defaults__", (embedded.sha256_file(fake_gguf),))
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append(gguf_path)
        time.sleep(0.3)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "convert_gguf_to_folder", fake_convert)
    # A half-written folder from an earlier crash: present, but without READY.
    target = embedded.embedded_model_dir()
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"partial")
    assert not embedded.is_prepared()

    results = []
    threads = [threading.Thread(target=lambda: results.append(embedded.prepare_embedded_model(gguf_path=fake_gguf)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [target, target]
    assert embedded.is_prepared() and not (target / "model.safetensors").exists()


def test_prepare_rejects_corrupt_download(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not the pinned file")
    with pytest.raises(embedded.EmbeddedModelError, match="checksum"):
        embedded.prepare_embedded_model(gguf_path=bad)
    assert not embedded.is_prepared()


# --------------------------------------------------------------------------------------- test models
def _first_position_changes(model, extra_kwargs=None) -> bool:
    x = torch.randint(3, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50 + 3
    with torch.no_grad():
        a = model(input_ids=x, **(extra_kwargs or {})).logits[0, 0]
        b = model(input_ids=y, **(extra_kwargs or {})).logits[0, 0]
    return not torch.allclose(a, b)


def test_stock_causal_class_is_bidirectional_with_4d_mask():
    causal = tiny_causal_lm(vocab_size=64)
    assert not _first_position_changes(causal)  # causal: position 0 cannot see the last token
    ids = torch.zeros(1, 12, dtype=torch.long)
    full = bidirectional_attention_mask(None, ids)
    assert _first_position_changes(causal, {"attention_mask": full})
    float_mask = bidirectional_attention_mask(None, ids, dtype=torch.float32)
    assert _first_position_changes(causal, {"attention_mask": float_mask})


def test_diffusion_like_models_are_bidirectional_and_declare_conventions():
    llada, dream = tiny_llada_like(), tiny_dream_like()
    assert _first_position_changes(llada) and _first_position_changes(dream)
    assert llada.config.shift_logits is False and dream.config.shift_logits is True
    assert llada.config.mask_token_id == 63 and dream.config.mask_token_id == 63


def test_left_padding_does_not_change_bidirectional_logits():
    model = tiny_llada_like()
    x = torch.randint(3, 60, (1, 8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 8])
    with torch.no_grad():
        a = model(input_ids=x).logits[0]
        b = model(input_ids=padded, attention_mask=mask).logits[0, 3:]
    assert torch.allclose(a, b, atol=1e-5)
