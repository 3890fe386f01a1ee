"""The ``accelerate launch`` entry for SAMI expert iteration (paper Alg. 1 on many GPUs).

    accelerate launch --config_file configs/accelerate/fsdp-8gpu.yaml scripts/train_sami.py \\
        --config configs/sami/mistral-7b-tldr.yaml [--key value ...]

Takes exactly the options of ``sami iterate``. Sampling and evaluation split queries across processes
(``cmikit.harness.evaluation.run_task``); training is the Trainer's data parallelism (FSDP / DeepSpeed per the
accelerate config). A plain ``python scripts/train_sami.py --config ...`` runs on one process.

Several processes on a CPU-only machine: ``accelerate launch --multi_gpu --num_processes 2 scripts/train_sami.py``
(accelerate then starts torchrun with the gloo backend). ``accelerate launch --cpu --num_processes 2`` starts
ONE process unless an MPI hostfile is given (accelerate's simple launcher), so this script refuses it rather
than silently running single-process.
"""

from __future__ import annotations

import os
import sys


def _check_launch() -> None:
    from cmikit.harness.errors import ConfigError

    # accelerate's simple launcher sets MASTER_ADDR for --num_processes > 1 but starts one process (no RANK).
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ \
            and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ \
            and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "accelerate launch --cpu --num_processes N starts a single process without an MPI hostfile; for N CPU "
            "processes use `accelerate launch --multi_gpu --num_processes N` (CPU-only machine: gloo) or "
            "`torchrun --nproc_per_node N`.")


def main() -> int:
    from cmikit.harness.cli import run_cli
    from cmikit.sami.cli import main as sami_main

    code = run_cli(_check_launch)
    return code or sami_main(["iterate", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
