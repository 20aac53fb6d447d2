"""2 processes (torchrun, gloo, CPU) give the same losses as 1 process with the same global batch.

One process with gradient accumulation 4 sees exactly the micro-batches that 2 ranks with accumulation 2 see
together (`MicroBatchSampler`), and the mean of micro-batch losses equals the rank-averaged gradient of DDP /
the reduce-scattered gradient of FSDP2. The results then differ only by float32 summation order:
tolerance 1e-5 relative on every step's loss and 1e-5 absolute on the final weights.

This file is also the worker script: ``torchrun ... tests/test_train_distributed.py A.yaml B.yaml`` trains each
recipe in turn in one process group (one launch for both strategies saves a slow start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def _recipes(tmp: Path):
    from tests.test_train_support import make_dataset, tiny_recipe

    mixture = make_dataset(tmp / "data", videos=4, images=2, texts=2)
    common = dict(
        train={
            "max_steps": 4,
            "epochs": 2,
            "global_batch_size": 4,
            "per_device_batch_size": 1,
            "save_steps": 2,
        },
        optim={"lr": 2e-3, "vision_tower_lr": 1e-3, "warmup_ratio": 0.25},
    )
    single = tiny_recipe(tmp, mixture, **common)
    single["train"]["output_dir"] = str(tmp / "single")
    multi = {}
    for strategy in ("ddp", "fsdp"):
        spec = tiny_recipe(tmp, mixture, **common)
        spec["train"]["output_dir"] = str(tmp / strategy)
        spec["parallel"] = {"strategy": strategy, "world_size": 2}
        multi[strategy] = spec
    return single, multi


@pytest.mark.slow  # subprocesses (torch start-up dominates)
def test_two_processes_match_one_process(tmp_path):
    import torch
    from safetensors.torch import load_file

    from tests.test_train_support import read_losses
    from videochat_flash.train.recipes import recipe_from_dict
    from videochat_flash.train.trainer import train

    single, multi = _recipes(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(recipe_from_dict(single))
    finally:
        torch.set_num_threads(before)
    files = []
    for strategy, spec in multi.items():
        files.append(tmp_path / f"{strategy}.yaml")
        files[-1].write_text(yaml.safe_dump(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port
        "--nproc_per_node",
        "2",
        __file__,
        *map(str, files),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ref_weights = load_file(str(reference.final_dir / "model.safetensors"))
    for strategy in multi:
        out = tmp_path / strategy
        losses = read_losses(out / "train_log.jsonl")
        assert len(losses) == reference.steps == 4
        for step, loss in enumerate(reference.losses, start=1):
            assert losses[step] == pytest.approx(loss, rel=TOLERANCE), (strategy, step)
        weights = load_file(str(out / "final" / "model.safetensors"))
        assert weights.keys() == ref_weights.keys()
        for k, v in ref_weights.items():
            assert torch.allclose(weights[k], v, rtol=0, atol=TOLERANCE), (strategy, k)
        assert (out / "checkpoint-00000004" / "rng_state_rank1.pt").is_file()
    assert (tmp_path / "fsdp" / "checkpoint-00000004" / "optimizer").is_dir()  # sharded optimizer state (DCP)


def _worker(files: list[str]) -> None:
    from videochat_flash.train.distributed import init_distributed, shutdown
    from videochat_flash.train.recipes import load_recipe
    from videochat_flash.train.trainer import train

    env = init_distributed()
    assert env.world_size == 2 and env.backend == "gloo"
    try:
        for f in files:
            train(load_recipe(f), env=env)
    finally:
        shutdown()


if __name__ == "__main__":
    _worker(sys.argv[1:])
