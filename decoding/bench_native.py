"""KV cache throughput on LLaDA-8B- and Dream-7B-shaped native models (``scripts/gpu_check.sh``).

Builds random-initialised ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` models with the shapes of the released
LLaDA-8B-Instruct and Dream-v0-Instruct-7B configs (:data:`cmikit.harness.native_dlm.RELEASED_CONFIGS` mapped by
:func:`cmikit.harness.native_dlm.native_config`; no download, the device has no hub), made bidirectional exactly
as :func:`cmikit.harness.models.load_model` makes the real ones, and decodes a random 64-token prompt with
``low_confidence``, one token per step, ``gen_length`` 256, ``block_length`` 32, with no cache, the prefix cache
and the dual cache, at batch 1 and 8, in bf16. The weights are random, so the tokens are meaningless; the time
and the positions run through the model are what counts. The caches use Fast-dLLM's refresh at each block start
(``cache_policy="block"``): on random weights every commit is surprising, so the default confidence-triggered
policy would refresh at every step and time the refreshes rather than the cache. Every arm runs in the same process, after a warm-up,
timed after a CUDA synchronize.

    python -m cmikit.decoding.bench_native --out runs/gpu_check_native.json          # on a CUDA GPU
    python -m cmikit.decoding.bench_native --dry-run --out /tmp/native_dry.json       # tiny shapes on the CPU

``--dry-run`` runs the same code on tiny shapes (hidden 64, 2 layers, gen 16, block 8, fp32, CPU) in seconds, so
the script is checked where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.loop import generate

MODES = ("none", "prefix", "dual")


def _mode(config: DiffusionGenerationConfig, mode: str) -> DiffusionGenerationConfig:
    return config.update(cache=mode) if mode == "none" else config.update(cache=mode, cache_policy="block")

FULL = {"prompt_length": 64, "gen_length": 256, "block_length": 32, "batch_sizes": (1, 8), "dtype": "bf16"}
DRY = {"prompt_length": 8, "gen_length": 16, "block_length": 8, "batch_sizes": (1, 2), "dtype": "fp32"}
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def shaped_model(fmt: str, device: str | torch.device, dtype: torch.dtype, tiny: bool = False) -> torch.nn.Module:
    """A random-initialised native model with the released ``fmt`` shapes (``tiny``: 2 layers, hidden 64)."""
    from cmikit.harness.native_dlm import RELEASED_CONFIGS, native_class, native_config, set_bidirectional

    raw = dict(RELEASED_CONFIGS[fmt])
    if tiny:
        shrink = ({"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128,
                   "embedding_size": 512, "vocab_size": 512, "mask_token_id": 511, "eos_token_id": 510,
                   "pad_token_id": 510} if fmt == "llada" else
                  {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                   "max_window_layers": 2, "intermediate_size": 128, "vocab_size": 512, "mask_token_id": 511,
                   "eos_token_id": 510, "bos_token_id": 509, "pad_token_id": 510})
        raw.update(shrink)
    config = native_config(raw)
    torch.manual_seed(0)
    with torch.device(device):
        model = native_class(fmt)._from_config(config, dtype=dtype)
    with torch.no_grad():  # random logits must not crown [MASK] itself (a step would then commit nothing)
        model.get_output_embeddings().weight[config.mask_token_id] = 0
    set_bidirectional(model)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time the finished work


def throughput(fmt: str, *, device: str = "cuda", dry_run: bool = False) -> dict[str, Any]:
    """Tokens/s and positions per sequence for no / prefix / dual cache, per batch size, on one ``fmt`` model."""
    from cmikit.decoding.adapters import adapt

    setting = DRY if dry_run else FULL
    model = shaped_model(fmt, device, _DTYPES[setting["dtype"]], tiny=dry_run)
    adapter = adapt(model)
    dev = adapter.device
    gen = torch.Generator().manual_seed(0)
    config = DiffusionGenerationConfig(gen_length=setting["gen_length"], block_length=setting["block_length"],
                                       steps=setting["gen_length"], strategy="low_confidence")
    warm = config.update(gen_length=setting["block_length"] * 2, steps=setting["block_length"] * 2)
    rows: dict[str, Any] = {}
    for batch in setting["batch_sizes"]:
        ids = torch.randint(0, adapter.mask_token_id, (batch, setting["prompt_length"]), generator=gen).to(dev)
        for mode in MODES:  # warm-up: allocator, kernels, the cache code path
            generate(adapter, ids, _mode(warm, mode))
        _sync(dev)
        by_mode = {}
        for mode in MODES:
            start = time.perf_counter()
            with torch.inference_mode():
                out = generate(adapter, ids, _mode(config, mode))
            _sync(dev)
            seconds = time.perf_counter() - start
            by_mode[mode] = {"seconds": round(seconds, 3),
                             "tokens_per_second": round(batch * setting["gen_length"] / seconds, 2),
                             "nfe": int(out.nfe),
                             "positions_per_sequence": int(out.tokens_per_row[0])}
        for mode in MODES:
            by_mode[mode]["speedup"] = round(by_mode[mode]["tokens_per_second"] / by_mode["none"]["tokens_per_second"], 3)
        rows[f"batch_{batch}"] = by_mode
    shape = {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "num_key_value_heads", "intermediate_size", "vocab_size")}
    params = sum(p.numel() for p in model.parameters())
    del model, adapter
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"class": {"llada": "LlamaForCausalLM", "dream": "Qwen2ForCausalLM"}[fmt], "shape": shape,
            "parameters": params, "results": rows}


def run(formats: tuple[str, ...] = ("llada", "dream"), device: str | None = None, dry_run: bool = False) -> dict:
    device = device or ("cpu" if dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --dry-run to check the script on the CPU")
    setting = DRY if dry_run else FULL
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report: dict[str, Any] = {
        "setting": {**{k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
                    "strategy": "low_confidence", "steps": setting["gen_length"], "device": device,
                    "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                    "dry_run": dry_run, "weights": "random (shapes of the released configs)"},
        "load_average_before": None if load is None else [round(v, 2) for v in load],
    }
    for fmt in formats:
        report[fmt] = throughput(fmt, device=device, dry_run=dry_run)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmikit.decoding.bench_native", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check_native.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, fp32, on the CPU (checks the script)")
    parser.add_argument("--formats", nargs="+", choices=("llada", "dream"), default=["llada", "dream"])
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    args = parser.parse_args(argv)
    report = run(tuple(args.formats), device=args.device, dry_run=args.dry_run)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for fmt in args.formats:
        for batch, by_mode in report[fmt]["results"].items():
            print(fmt, batch, json.dumps({m: [by_mode[m]["tokens_per_second"], by_mode[m]["speedup"]]
                                          for m in MODES}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
