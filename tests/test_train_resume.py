"""Checkpoints: atomic, keep-last-N, HF layout; a run killed with SIGKILL and resumed follows exactly the loss
trajectory of an uninterrupted run (float32, CPU, one thread: bit-exact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_train_support import (
    make_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    read_losses,
    tiny_recipe,
)
from videochat_flash.train import checkpoint as C
from videochat_flash.train.recipes import recipe_from_dict
from videochat_flash.train.trainer import train

STEPS = 8  # two epochs of 4 steps: the resume crosses an epoch boundary


def _resume_recipe(tmp: Path, mixture: Path, out: Path) -> dict:
    # Everything that carries state across a checkpoint is on: multi-epoch data order, AdamW moments, warmup +
    # cosine, LoRA dropout (RNG), full training of the tower and projector, gradient checkpointing, and
    # data-loader worker processes.
    return tiny_recipe(
        tmp,
        mixture,
        data={"group_by_modality": True, "num_workers": 2},  # worker processes decode ahead
        train={
            "output_dir": str(out),
            "max_steps": STEPS,
            "epochs": 2,
            "save_steps": 2,
            "keep_last": 2,
            "gradient_checkpointing": True,
            "global_batch_size": 2,
            "per_device_batch_size": 1,
        },
        optim={"lr": 2e-3, "vision_tower_lr": 1e-3, "warmup_ratio": 0.1},
        lora={"enabled": True, "rank": 2, "alpha": 4.0, "dropout": 0.1},
    )


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("WORLD_SIZE", None)
    return env


def _start(recipe_file: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "videochat_flash.train", str(recipe_file), *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # subprocesses (torch start-up dominates)
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    mixture = make_dataset(tmp_path / "data", videos=4, images=2, texts=2)
    reference = train(recipe_from_dict(_resume_recipe(tmp_path, mixture, tmp_path / "ref")))
    assert reference.steps == STEPS

    out = tmp_path / "killed"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(_resume_recipe(tmp_path, mixture, out)))
    proc = _start(recipe_file)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and max(read_losses(log), default=0) >= 5:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    killed_at = max(read_losses(log))
    assert 5 <= killed_at < STEPS and not (out / C.FINAL).exists()
    assert len(C.list_checkpoints(out)) <= 2  # keep_last

    resumed = _start(recipe_file, "--resume", str(out))
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    losses = read_losses(log)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in range(1, STEPS + 1)] == reference.losses  # exact float equality
    state = C.read_train_state(C.find_resume_dir(out))
    assert state.step == STEPS and state.losses == reference.losses


def test_checkpoint_layout_atomicity_and_keep_last(tmp_path):
    from videochat_flash.model.videochat import VideoChatFlash

    mixture = make_dataset(tmp_path / "data", videos=1, images=1, texts=2)
    out = tmp_path / "out"
    (out / ".tmp-checkpoint-00000099").mkdir(parents=True)  # debris of a killed save
    (out / ".tmp-checkpoint-00000099" / "junk").write_text("x")
    spec = tiny_recipe(
        tmp_path,
        mixture,
        train={"output_dir": str(out), "max_steps": 3, "epochs": 2, "save_steps": 1, "keep_last": 2},
    )
    result = train(recipe_from_dict(spec))
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["checkpoint-00000002", "checkpoint-00000003", "final"]
    ckpt = out / "checkpoint-00000003"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        C.TRAINER_STATE,
        C.OPTIMIZER,
        C.SCHEDULER,
        "rng_state_rank0.pt",
    ):
        assert (ckpt / name).is_file(), name
    state = json.loads((ckpt / C.TRAINER_STATE).read_text())
    assert state["step"] == 3 and state["micro_batches"] == 6 and state["accumulation"] == 2
    model = VideoChatFlash.from_pretrained(result.final_dir)  # the HF layout loads strictly
    assert model.config.tokenizer_model_max_length == 512
    with pytest.raises(Exception, match="no complete checkpoint"):
        C.find_resume_dir(tmp_path / "data")


def test_resume_refuses_a_different_setup(tmp_path):
    mixture = make_dataset(tmp_path / "data", videos=0, images=0, texts=4)
    out = tmp_path / "out"
    train(recipe_from_dict(tiny_recipe(tmp_path, mixture, train={"output_dir": str(out), "max_steps": 1})))
    spec = tiny_recipe(tmp_path, mixture, train={"output_dir": str(out), "max_steps": 2, "seed": 5})
    with pytest.raises(Exception, match="resume with the same setup"):
        train(recipe_from_dict(spec), resume=out)
