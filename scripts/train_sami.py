"""The ``accelerate launch`` entry for SAMI expert iteration (paper Alg. 1 on many GPUs).

    accelerate launch --config_file configs/accelerate/fsdp-8gpu.yaml scripts/train_sami.py \\
        --config configs/sami/mistral-7b-tldr.yaml [--key value ...]

Takes exactly the options of ``sami iterate``. Sampling and evaluation split queries across processes
(``harness.evaluation.run_task``); training is the Trainer's data parallelism (FSDP / DeepSpeed per the
accelerate config). A plain ``python scripts/train_sami.py --config ...`` runs on one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sami.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["iterate", *sys.argv[1:]]))
