"""`videochat-flash eval ...` end to end on a tiny random model: bench (+ resume), synth, niah, niah-build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from videochat_flash.cli import main
from videochat_flash.data.synth import write_mp4
from videochat_flash.eval.bench import MVBENCH_TASKS
from videochat_flash.inference import session
from videochat_flash.model.factory import build_tiny_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("cli_ckpt"), seed=2)


def _video(path, seconds: int, shade: int):
    rng = np.random.default_rng(shade)
    frames = [
        np.clip(rng.normal(shade + 3 * i, 20, (40, 56, 3)), 0, 255).astype(np.uint8) for i in range(seconds)
    ]
    write_mp4(path, frames, fps=1.0)


@pytest.fixture(scope="module")
def mvbench(tmp_path_factory):
    """A fake MVBench folder: 3 action_antonym questions about two generated videos, the other tasks empty."""
    root = tmp_path_factory.mktemp("mvbench")
    ann, videos = root / "ann" / "MVBench" / "json", root / "videos"
    ann.mkdir(parents=True)
    videos.mkdir()
    _video(videos / "a.mp4", 12, 40)
    _video(videos / "b.mp4", 20, 120)
    records = [
        {
            "video": "a.mp4",
            "question": "What happens?",
            "candidates": ["opening", "closing", "waiting"],
            "answer": "closing",
        },
        {"video": "a.mp4", "question": "What next?", "candidates": ["up", "down", "none"], "answer": "up"},
        {
            "video": "b.mp4",
            "question": "Which way?",
            "candidates": ["left", "right", "none"],
            "answer": "none",
        },
    ]
    for task in MVBENCH_TASKS:
        (ann / f"{task}.json").write_text(json.dumps(records if task == "action_antonym" else []))
    return root


def _spy(monkeypatch):
    calls = []
    real = session.chat

    def spy(model, video, question, **kw):
        answer, history = real(model, video, question, **kw)
        calls.append({"question": question, "user": history[0]["content"], **kw})
        return answer, history

    monkeypatch.setattr(session, "chat", spy)
    return calls


def test_eval_bench_end_to_end_and_resume(ckpt, mvbench, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run.jsonl"
    argv = [
        "eval",
        "bench",
        "mvbench",
        "--annotations",
        str(mvbench / "ann"),
        "--videos",
        str(mvbench / "videos"),
    ]
    argv += ["--model", str(ckpt), "--device", "cpu", "--output", str(out), "--quiet"]
    calls = _spy(monkeypatch)
    assert main([*argv, "--limit", "2"]) == 0
    assert len(calls) == 2
    first = calls[0]
    assert first["generation"] == {"max_new_tokens": 16, "do_sample": False}
    assert first["max_num_frames"] == 512 and first["compression"].enabled is False
    prompt = "Question: What happens?\nOption:\n(A) opening\n(B) closing\n(C) waiting\n\nOnly give the best option."
    assert first["question"] == prompt
    assert (
        first["user"]
        == "<image>\nThe video lasts for 12.00 seconds, and 8 frames are uniformly sampled from it. " + prompt
    )
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1]
    assert all(r["error"] is None and isinstance(r["prediction"], str) for r in recs)
    table = capsys.readouterr().out
    assert table.startswith("## mvbench") and "| accuracy |" in table

    calls.clear()  # resume: only the third question is asked
    assert main(argv) == 0
    assert [c["question"].split("\n")[0] for c in calls] == ["Question: Which way?"]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2]
    metrics = json.loads((tmp_path / "run.metrics.json").read_text())
    assert metrics["benchmark"] == "mvbench" and metrics["count"] == 3
    assert (tmp_path / "run.metrics.md").read_text().startswith("## mvbench")

    calls.clear()  # nothing left: no model calls, same table
    assert main([*argv, "--compress"]) == 0 and calls == []


def test_eval_bench_errors(ckpt, mvbench, tmp_path, capsys):
    assert (
        main(["eval", "bench", "nope", "--annotations", str(mvbench / "ann"), "--videos", str(tmp_path)]) == 2
    )
    assert "unknown benchmark" in capsys.readouterr().err
    # missing videos are recorded as errors, the run finishes
    argv = ["eval", "bench", "mvbench", "--annotations", str(mvbench / "ann"), "--videos", str(tmp_path)]
    assert (
        main([*argv, "--model", str(ckpt), "--output", str(tmp_path / "e.jsonl"), "--quiet", "--limit", "1"])
        == 0
    )
    (rec,) = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert rec["prediction"] is None and rec["error"]


def test_eval_synth_json(ckpt, capsys, tmp_path):
    argv = [
        "eval",
        "synth",
        "--model",
        str(ckpt),
        "--seed",
        "3",
        "--num-samples",
        "1",
        "--json",
        "--size",
        "32",
    ]
    argv += ["--fps", "2", "--short-seconds", "4,4", "--long-seconds", "6,6", "--niah-lengths", "4"]
    argv += ["--niah-depths", "0,1", "--needle-seconds", "1", "--out", str(tmp_path / "set"), "--num-single", "1"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seed"] == 3 and res["num_samples"] == 1
    assert res["counts"]["single_mc_shape"] == 1
    for key in ("per_task", "mc_accuracy", "niah", "grounding_r@0.5", "niah_accuracy"):
        assert key in res
    assert set(res["niah"]) == {"4"} and set(res["niah"]["4"]) == {"0", "1"}
    assert (tmp_path / "set" / "eval.jsonl").is_file()


def test_eval_niah_and_build(ckpt, tmp_path, capsys):
    skdata = pytest.importorskip("skimage.data")
    images = tmp_path / "img"
    images.mkdir()
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")
    for n in names:
        Image.fromarray(getattr(skdata, n)()).save(images / f"{n}.jpg")
    needles = [
        {
            "question": "Find the frame of a cup. What?\nOptions: (A) a\n(B) b\nOnly give the best option. Best option: (",
            "answer": "A",
            "image": "coffee.jpg",
            "id": 0,
        },
        {
            "question": "Find the frame of a cat. What?\nOptions: (A) a\n(B) b\nOnly give the best option. Best option: (",
            "answer": "B",
            "image": "chelsea.jpg",
            "id": 1,
        },
    ]
    (tmp_path / "needles.json").write_text(json.dumps(needles))
    _video(tmp_path / "hay.mp4", 24, 60)
    out = tmp_path / "out"
    argv = ["eval", "niah", "--model", str(ckpt), "--haystack", str(tmp_path / "hay.mp4"), "--needles"]
    argv += [
        str(tmp_path / "needles.json"),
        "--images",
        str(images),
        "--frames",
        "8,16",
        "--depths",
        "0,0.5,1",
    ]
    assert main([*argv, "--output", str(out), "--yarn-factor", "4", "--quiet", "--no-cache", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["rope_scaling"]["type"] == "yarn" and res["num_needles"] == 2
    assert set(res["accuracy"]) == {"8", "16"} and res["overall"] is not None
    assert {p.name for p in out.iterdir()} == {"niah.json", "niah.jsonl", "niah_heatmap.png"}
    assert main([*argv[:-2], "--multi-hop", "--output", str(out)]) == 2
    assert "single-hop records" in capsys.readouterr().err

    captions = [{"image": f"{n}.jpg", "caption": f"a photo of {n}"} for n in names]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    build = ["eval", "niah-build", "--captions", str(tmp_path / "captions.json"), "--images", str(images)]
    assert (
        main(
            [*build, "--out", str(tmp_path / "mh"), "--num-samples", "2", "--hops", "2", "--distractors", "2"]
        )
        == 0
    )
    path = tmp_path / "mh" / "niah-multihop.json"
    recs = json.loads(path.read_text())
    assert len(recs) == 2 and all(len(r["images"]) == 5 for r in recs)
    assert "niah-multihop.json" in capsys.readouterr().out
    argv = [
        "eval",
        "niah",
        "--model",
        str(ckpt),
        "--haystack",
        str(tmp_path / "hay.mp4"),
        "--needles",
        str(path),
    ]
    assert (
        main(
            [
                *argv,
                "--images",
                str(tmp_path / "mh"),
                "--frames",
                "8",
                "--output",
                str(tmp_path / "mho"),
                "--quiet",
                "--no-cache",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "multi-hop NIAH (embedding)" in text and "Caption" in text
