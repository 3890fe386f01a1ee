#!/usr/bin/env bash
# GPU checks, run as one short script on a machine with a CUDA GPU (not part of CPU CI):
#   1. the vLLM backend for real: generate, sequence_logprobs, next_token_logprobs, compared with the
#      transformers backend on the same model;
#   2. one bf16 forward/backward step on the GPU;
#   3. decoding throughput of the masked-diffusion loop on the GPU (when the decoding package provides it).
# Usage: bash scripts/gpu_check.sh [model-ref]   (default: the embedded smollm2-135m-instruct)
# Writes runs/gpu_check.json. Installs the vllm extra into .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2-135m-instruct}"
make setup TORCH_SPEC="${TORCH_SPEC:-torch}" >/dev/null
PY=.venv/bin/python
$PY -c "import vllm" 2>/dev/null || $PY -m pip install --quiet -e ".[vllm]"
mkdir -p runs
MODEL="$MODEL" $PY - <<'PYEOF'
import json, os, time
import torch
from harness.backends import SamplingParams, TransformersBackend, first_token_ids, make_backend

assert torch.cuda.is_available(), "no CUDA device visible"
model = os.environ["MODEL"]
result = {"device": torch.cuda.get_device_name(0), "model": model}
vb = make_backend("vllm", model, gpu_memory_utilization=0.5, dtype="float32", enforce_eager=True)
tb = TransformersBackend.from_ref(model, dtype="fp32", device_map="cuda:0")
chat = [[{"role": "user", "content": "What is the capital of France?"}]]
t0 = time.perf_counter(); text = vb.generate(chat * 64, SamplingParams(max_new_tokens=32)); dt = time.perf_counter() - t0
result["vllm_generate"] = {"sample": text[0], "seconds_64": round(dt, 3)}
assert text[0].strip(), "vLLM generated empty text"
prompts = ["The sky is", [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}]]
comps = [" blue today.", " there!"]
sv, nv = vb.sequence_logprobs(prompts, comps); st, nt = tb.sequence_logprobs(prompts, comps)
result["sequence_logprobs_max_diff"] = float((sv - st).abs().max()); assert torch.equal(nv, nt)
ids = first_token_ids(tb.tokenizer, ["Yes", "No"])
q = [[{"role": "user", "content": "Is fire hot? Answer Yes or No."}, {"role": "assistant", "content": ""}]]
lv, lt = vb.next_token_logprobs(q, ids), tb.next_token_logprobs(q, ids)
result["next_token_logprobs_max_diff"] = float((lv - lt).abs().max())
assert result["sequence_logprobs_max_diff"] < 0.05 and result["next_token_logprobs_max_diff"] < 0.05, result
del vb; torch.cuda.empty_cache()
# bf16 training step
from harness.models import load_model
m, tok = load_model(model, dtype="bf16", device_map="cuda:0", eval_mode=False)
batch = tok(["A short training sentence."] * 8, return_tensors="pt").to("cuda:0")
loss = m(**batch, labels=batch["input_ids"]).loss; loss.backward()
assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
result["bf16_step_loss"] = float(loss)
try:
    from decoding.bench import gpu_throughput  # provided by the decoding package when available
    result["decoding"] = gpu_throughput()
except ImportError:
    result["decoding"] = "decoding.bench.gpu_throughput not available"
print(json.dumps(result, indent=2))
json.dump(result, open("runs/gpu_check.json", "w"), indent=2)
PYEOF
