"""The demo model: the one-command pipeline end to end (tiny scale), and the committed model's quality bar."""

import json
from pathlib import Path

import pytest

from videochat_flash import VideoChatFlash
from videochat_flash.inference.cache import TokenCache
from videochat_flash.train.demo import DATA, build_demo

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "videochat-flash-demo"


def test_tiny_end_to_end_pipeline(tmp_path):
    """Generate a few samples, train a few steps of every stage, save, load, answer."""
    out = build_demo(tmp_path / "model", tmp_path / "work", seed=3, scale=0.004, evaluate=False)
    report = json.loads((out / "training_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [
        "stage0_scratch",
        "stage1_connector",
        "stage2_short",
        "stage3_short_long",
        "stage4_highres",
    ]
    assert all(s["steps"] >= 1 for s in report["stages"])
    assert (out / "README.md").is_file() and (out / "example.mp4").is_file()
    model = VideoChatFlash.from_pretrained(out)
    assert model.config.image_size == 96  # stage 4 raised the resolution
    answer, history = model.chat(
        str(out / "example.mp4"), "What color is the circle?", generation={"max_new_tokens": 6}
    )
    assert isinstance(answer, str) and len(history) == 2


@pytest.mark.skipif(not DEMO.is_dir(), reason="models/videochat-flash-demo is not built in this checkout")
def test_committed_demo_model_meets_mc_bar(tmp_path):
    """Held-out seed never used in training: multiple-choice accuracy on videos of the trained lengths >= 90%."""
    from videochat_flash.data.synth import evaluate, make_eval_set

    eval_dir = tmp_path / "eval"
    make_eval_set(
        eval_dir,
        4242,
        12,
        size=DATA["size"],
        fps=DATA["fps"],
        short_seconds=DATA["short_seconds"],
        long_seconds=DATA["long_seconds"],
        train_max_seconds=max(DATA["long_seconds"]),
        niah_multipliers=(),
    )
    model = VideoChatFlash.from_pretrained(DEMO)
    cache = TokenCache(tmp_path / "cache")

    def answer(record, video_path):
        return model.chat(
            video_path, record["prompt"], generation={"max_new_tokens": 8, "do_sample": False}, cache=cache
        )[0]

    result = evaluate(eval_dir, answer, progress=False)
    assert result["counts"]["mc_color"] >= 8
    assert result["mc_accuracy"] >= 0.9, result["per_task"]
