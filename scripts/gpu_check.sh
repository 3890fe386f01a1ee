#!/usr/bin/env bash
# GPU checks, run as one short script on a machine with a CUDA GPU (not part of CPU CI):
#   1. the vLLM backend for real: generate, sequence_logprobs, next_token_logprobs, compared with the
#      transformers backend on the same model;
#   2. one bf16 forward/backward step on the GPU;
#   3. decoding throughput on the GPU: tokens/s with no KV cache, prefix and dual cache (cmikit.decoding.bench.gpu_throughput);
#   4. SAMI under FSDP: `accelerate launch` with configs/accelerate/fsdp-8gpu.yaml on min(2, #GPUs) GPUs, one
#      iteration of 2 full-weight steps, fp32; the per-step loss must equal a single-process run with the same
#      global batch (<= 1e-4) and every query must be sampled and evaluated exactly once;
#   5. LLaDA-8B- and Dream-7B-shaped native models (LlamaForCausalLM / Qwen2ForCausalLM made bidirectional,
#      random weights, no download): tokens/s with no / prefix / dual cache at gen_length 256, bf16, batch 1 and 8
#      (cmikit.decoding.bench_native; runs/gpu_check_native.json);
#   6. one SAMI round (scripts/sami.py, TRL's script shape) under TRL's own accelerate configs fsdp2 and zero3
#      (trl/accelerate_configs/), 2 steps in bf16 with LoRA off, on min(2, #GPUs) GPUs; each must save a model;
#   7. peak memory of the per-token log-probs on [8, 256, 49152] bf16 logits on the GPU, before vs after TRL's
#      selective_log_softmax (scripts/bench_sami.py --part memory).
# Usage: bash scripts/gpu_check.sh [model-ref]   (default: the embedded smollm2-135m-instruct)
#        bash scripts/gpu_check.sh --dry-run     (CPU, no GPU needed: part 5 on tiny shapes, fp32, in seconds)
# Writes runs/gpu_check.json, runs/gpu_check_fsdp.json, runs/gpu_check_native.json, runs/gpu_check_round/ and
# runs/bench_sami_memory.json. Installs the vllm extra (and deepspeed, for zero3) into .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--dry-run" ]; then
    [ -x .venv/bin/python ] || make setup >/dev/null
    .venv/bin/python -m cmikit.decoding.bench_native --dry-run --out runs/gpu_check_native_dry.json
    exit 0
fi
MODEL="${1:-smollm2-135m-instruct}"
make setup TORCH_SPEC="${TORCH_SPEC:-torch}" >/dev/null
PY=.venv/bin/python
$PY -c "import vllm" 2>/dev/null || $PY -m pip install --quiet -e ".[vllm]"
mkdir -p runs
MODEL="$MODEL" $PY - <<'PYEOF'
import json, os, time
import torch
from cmikit.harness.backends import SamplingParams, TransformersBackend, first_token_ids, make_backend

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
from cmikit.harness.models import load_model
m, tok = load_model(model, dtype="bf16", device_map="cuda:0", eval_mode=False)
batch = tok(["A short training sentence."] * 8, return_tensors="pt").to("cuda:0")
loss = m(**batch, labels=batch["input_ids"]).loss; loss.backward()
assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
result["bf16_step_loss"] = float(loss)
del m; torch.cuda.empty_cache()
from cmikit.decoding.bench import gpu_throughput
result["decoding"] = gpu_throughput(model)
print(json.dumps(result, indent=2))
json.dump(result, open("runs/gpu_check.json", "w"), indent=2)
PYEOF

# ---- 5. LLaDA-8B- / Dream-7B-shaped native models: no / prefix / dual cache, gen 256, bf16, batch 1 and 8 -----
$PY -m cmikit.decoding.bench_native --out runs/gpu_check_native.json

# ---- 4. SAMI expert iteration under FSDP vs one process, same global batch ----------------------------------
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
NPROC=$(( NGPU >= 2 ? 2 : 1 ))
rm -rf runs/gpu_check_fsdp && mkdir -p runs/gpu_check_fsdp
cat > runs/gpu_check_fsdp/run.yaml <<YAML
model: $MODEL
queries: builtin:dialogue
n_heldout: 4
queries_per_iteration: 8
iterations: 1
steps_per_iteration: [2]
max_new_tokens: 16
generation_batch_size: 1
eval_batch_size: 1
drop_identical: false
learning_rate: 1.0e-5
model_dtype: fp32
bf16: false
gradient_accumulation_steps: 1
save_strategy: "no"
YAML
.venv/bin/accelerate launch --config_file configs/accelerate/fsdp-8gpu.yaml --num_processes "$NPROC" --mixed_precision no \
    --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer \
    scripts/train_sami.py --config runs/gpu_check_fsdp/run.yaml --output_dir runs/gpu_check_fsdp/fsdp \
    --per_device_train_batch_size $(( 4 / NPROC ))
CUDA_VISIBLE_DEVICES=0 $PY scripts/train_sami.py --config runs/gpu_check_fsdp/run.yaml \
    --output_dir runs/gpu_check_fsdp/single --per_device_train_batch_size 4
NPROC="$NPROC" $PY - <<'PYEOF'
import json, os
from pathlib import Path
root = Path("runs/gpu_check_fsdp")
def losses(run):
    log = json.loads((root / run / "iteration-1" / "model" / "train_log.json").read_text())
    return {e["step"]: e["loss"] for e in log if "loss" in e}
def records(run, stage):
    return [json.loads(l) for l in (root / run / "iteration-1" / stage / "records.jsonl").read_text().splitlines()]
fs, single = losses("fsdp"), losses("single")
out = {"processes": int(os.environ["NPROC"]), "loss_fsdp": fs, "loss_single": single,
       "max_loss_diff": max(abs(fs[k] - single[k]) for k in single)}
for stage in ("samples", "eval"):
    ids = [r["id"] for r in records("fsdp", stage)]
    out[f"{stage}_ids_unique_and_complete"] = len(ids) == len(set(ids)) == len(records("single", stage))
    out[f"{stage}_processes"] = sorted({r["process"] for r in records("fsdp", stage)})
print(json.dumps(out, indent=2))
json.dump(out, open("runs/gpu_check_fsdp.json", "w"), indent=2)
assert sorted(fs) == sorted(single) and out["max_loss_diff"] <= 1e-4, out
assert out["samples_ids_unique_and_complete"] and out["eval_ids_unique_and_complete"], out
PYEOF

# ---- 6. one SAMI round (scripts/sami.py) under TRL's fsdp2 and zero3 accelerate configs -----------------------
$PY -c "import deepspeed" 2>/dev/null || $PY -m pip install --quiet deepspeed
TRL_CONFIGS=$($PY -c "import pathlib, trl; print(pathlib.Path(trl.__file__).parent / 'accelerate_configs')")
rm -rf runs/gpu_check_round
for CFG in fsdp2 zero3; do
    .venv/bin/accelerate launch --config_file "$TRL_CONFIGS/$CFG.yaml" --num_processes "$NPROC" \
        scripts/sami.py --config configs/sami/smollm2-round.yaml --model_name_or_path "$MODEL" \
        --use_peft false --bf16 true --max_steps 2 --per_device_train_batch_size 1 \
        --output_dir "runs/gpu_check_round/$CFG"
    test -f "runs/gpu_check_round/$CFG/config.json" && test -f "runs/gpu_check_round/$CFG/README.md"
    echo "scripts/sami.py under $CFG: saved runs/gpu_check_round/$CFG"
done

# ---- 7. peak memory of the log-prob step on the GPU: before vs TRL's selective_log_softmax -----------------------
$PY scripts/bench_sami.py --part memory
