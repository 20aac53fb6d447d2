"""Shared helpers of the training tests: a tiny model recipe, synthetic media and annotations.

Everything is written under pytest's tmp_path; the fixture tokenizer is copied there, never into the repo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REFERENCE, require_fixtures
from videochat_flash.model.loading import TOKENIZER_FILES  # noqa: E402

# A tiny Qwen2 + UMT: 32 px frames cut into 4 px patches (64 per frame), so a 4-frame clip (256 tokens) merges
# to 64 and an image tile keeps its 64 tokens.
TINY_LLM = dict(
    vocab_size=1024,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=4096,
    bos_token_id=1021,
    eos_token_id=1023,
)
TINY_VISION = dict(
    umt_image_size=32,
    umt_hidden_size=32,
    umt_num_hidden_layers=3,
    umt_num_attention_heads=2,
    umt_patch_size=4,
    mm_hidden_size=32,
    image_grid_pinpoints="(1x1),...,(2x2)",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one intra-op thread (and the CPU is shared); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_tokenizer(dst: Path) -> Path:
    src = require_fixtures(REFERENCE / "case_a_res224_nocompress")
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def make_video(path: Path, frames: int = 8, size: int = 32, fps: int = 4, seed: int = 0) -> Path:
    """A small mp4 (mpeg4) with moving colour blocks."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            img = np.full((size, size, 3), 40 * (t % 6), dtype=np.uint8)
            img[:, (t * 3) % size : (t * 3) % size + 8] = rng.integers(0, 255, 3, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_image(path: Path, width: int = 48, height: int = 24, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def qa(question: str, answer: str, media: bool = True) -> list[dict]:
    prefix = "<image>\n" if media else ""
    return [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]


def make_dataset(
    root: Path, videos: int = 4, images: int = 2, texts: int = 2, broken: tuple[str, ...] = ()
) -> Path:
    """Media + one .jsonl annotation file + a mixture YAML; returns the YAML path.

    ``broken`` may contain "missing" (a record whose video does not exist) and "corrupt" (a file that is not a video).
    """
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(videos):
        make_video(media / f"v{i}.mp4", frames=8 + 4 * (i % 2), seed=i)
        records.append(
            {
                "id": f"v{i}",
                "video": f"v{i}.mp4",
                "conversations": qa(f"what moves in clip {i}?", f"a block number {i} moves right."),
            }
        )
    for i in range(images):
        make_image(media / f"i{i}.png", seed=i)
        records.append(
            {
                "id": f"i{i}",
                "image": f"i{i}.png",
                "conversations": qa("describe the picture.", f"noise pattern {i}."),
            }
        )
    for i in range(texts):
        records.append({"id": f"t{i}", "conversations": qa(f"say {i}.", f"{i} it is.", media=False)})
    if "missing" in broken:
        records.append(
            {"id": "gone", "video": "does_not_exist.mp4", "conversations": qa("what?", "nothing.")}
        )
    if "corrupt" in broken:
        (media / "corrupt.mp4").write_bytes(b"this is not a video at all" * 10)
        records.append({"id": "bad", "video": "corrupt.mp4", "conversations": qa("what?", "nothing.")})
    ann = root / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    mixture = root / "mixture.yaml"
    mixture.write_text(
        f"datasets:\n  - json_path: {ann.name}\n    sampling_strategy: all\n    data_root: media\n"
    )
    return mixture


def tiny_recipe(tmp: Path, data_yaml: Path | None, **sections) -> dict:
    """A recipe dict for the tiny model; ``sections`` update the sections (one level deep)."""
    recipe = {
        "name": "tiny",
        "model": {
            "llm": dict(TINY_LLM),
            "tokenizer": str(copy_tokenizer(tmp / "tokenizer")),
            "vision_tower": "umt-large",
            "config": dict(TINY_VISION),
        },
        "data": {
            "path": str(data_yaml) if data_yaml else None,
            "template": "qwen_2",
            "frames_lowbound": 4,
            "frames_upbound": 8,
            "sample_type": "dynamic_fps1",
            "max_length": 512,
            "num_workers": 0,
            "group_by_modality": False,
        },
        "optim": {"lr": 1e-3, "vision_tower_lr": 2e-4, "warmup_ratio": 0.0},
        "train": {
            "output_dir": str(tmp / "out"),
            "global_batch_size": 2,
            "per_device_batch_size": 1,
            "max_steps": 2,
            "gradient_checkpointing": False,
            "dtype": "fp32",
            "seed": 0,
        },
        "parallel": {"strategy": "none", "world_size": 1},
        "logging": {"progress_bar": False, "tensorboard": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(section), dict):
            recipe[section] = {**recipe[section], **values}
        else:
            recipe[section] = values
    return recipe


def read_losses(log_file: Path) -> dict[int, float]:
    """step -> loss from a train_log.jsonl (the last record of a step wins: resumed runs repeat steps)."""
    out = {}
    for line in log_file.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_tiny_video_is_readable(tmp_path):
    from videochat_flash.video import load_video

    path = make_video(tmp_path / "v.mp4", frames=8)
    video = load_video(str(path), 8, min_frames=4, local_num_frames=4)
    assert video.frames.dtype == np.uint8 and video.frames.shape[1:] == (32, 32, 3)
    assert video.frames.shape[0] % 4 == 0
