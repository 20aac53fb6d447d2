"""The main job end to end: CLI ask/--json/info/chat, its error paths, the token cache, chat history, streams."""

import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from videochat_flash import VideoChatFlash, VideoTokens
from videochat_flash.cli import main
from videochat_flash.inference.cache import TokenCache
from videochat_flash.inference.prompt import build_chat_prompt

from .conftest import write_test_video


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return VideoChatFlash.from_pretrained(tiny_model_dir)


def test_ask_prints_answer(capsys, tiny_model_dir, small_video, cache_dir):
    code, out, err = run_cli(
        capsys,
        "ask",
        str(small_video),
        "What color is the corner?",
        "--model",
        str(tiny_model_dir),
        "--max-new-tokens",
        "4",
        "--cache-dir",
        cache_dir,
        "--quiet",
    )
    assert code == 0, err
    model = VideoChatFlash.from_pretrained(tiny_model_dir)
    expected, _ = model.chat(
        str(small_video), "What color is the corner?", generation={"max_new_tokens": 4, "do_sample": False}
    )
    assert out.strip() == expected


def test_ask_json_and_cache_hit(capsys, tiny_model_dir, small_video, cache_dir):
    args = [
        "ask",
        str(small_video),
        "Q?",
        "--model",
        str(tiny_model_dir),
        "--max-new-tokens",
        "3",
        "--json",
        "--cache-dir",
        cache_dir,
    ]
    code, out, _ = run_cli(capsys, *args)
    first = json.loads(out)
    assert code == 0 and first["cache_hit"] is False
    assert {"answer", "timings", "cache_hit", "frames", "visual_tokens"} <= set(first)
    assert first["timings"]["decode_video"] > 0 and first["timings"]["encode"] > 0
    assert (
        first["frames"] == 48 and first["visual_tokens"] == 48 * 16
    )  # 12 s video: min 64 frames capped to vlen
    code, out, _ = run_cli(capsys, *args)
    second = json.loads(out)
    assert second["cache_hit"] is True
    assert "decode_video" not in second["timings"] and "encode" not in second["timings"]
    assert second["answer"] == first["answer"]
    # A different sampling setting is a different entry.
    code, out, _ = run_cli(capsys, *args, "--max-frames", "16")
    assert json.loads(out)["cache_hit"] is False


def test_corrupt_cache_entry_is_recomputed(capsys, tiny_model_dir, small_video, cache_dir):
    args = [
        "ask",
        str(small_video),
        "Q?",
        "--model",
        str(tiny_model_dir),
        "--max-new-tokens",
        "2",
        "--json",
        "--cache-dir",
        cache_dir,
    ]
    first = json.loads(run_cli(capsys, *args)[1])
    entries = list(TokenCache(cache_dir).entries())
    assert len(entries) == 1
    entries[0].write_bytes(b"garbage")
    again = json.loads(run_cli(capsys, *args)[1])
    assert again["cache_hit"] is False and again["answer"] == first["answer"]


def test_info(capsys, tiny_model_dir, small_video):
    code, out, _ = run_cli(capsys, "info", str(small_video), "--model", str(tiny_model_dir), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["num_frames"] == 48 and info["fps"] == 4.0 and info["duration"] == 12.0
    assert info["sampled_frames"] == 48
    assert info["visual_tokens"] == 48 * 16
    # The published [4, 18] of 28 layers scales to [1] for this 2-layer model: one drop, to 75%.
    assert info["visual_tokens_per_llm_stage"]["tokens"] == [768, 576]


def test_chat_through_stdin(tiny_model_dir, small_video, tmp_path):
    questions = "What is it?\nAnd then?\n\n"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "videochat_flash.cli",
            "chat",
            str(small_video),
            "--model",
            str(tiny_model_dir),
            "--max-new-tokens",
            "3",
            "--no-cache",
            "--quiet",
        ],
        input=questions,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.strip("\n").split("\n")
    assert len(answers) == 2
    model = VideoChatFlash.from_pretrained(tiny_model_dir)
    gen = {"max_new_tokens": 3, "do_sample": False}
    a1, history = model.chat(str(small_video), "What is it?", generation=gen)
    a2, _ = model.chat(str(small_video), "And then?", history=history, generation=gen)
    assert answers == [a1, a2]


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d / "missing.mp4", "video not found"),
        (lambda d: (d / "text.mp4").write_text("hello") and d / "text.mp4", "text.mp4"),
        (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty.mp4"),
    ],
)
def test_ask_bad_video_is_one_line(capsys, tiny_model_dir, tmp_path, make, needle):
    path = make(tmp_path)
    code, out, err = run_cli(capsys, "ask", str(path), "Q?", "--model", str(tiny_model_dir), "--no-cache")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_ask_bad_checkpoint(capsys, small_video, tmp_path):
    code, _, err = run_cli(capsys, "ask", str(small_video), "Q?", "--model", str(tmp_path))
    assert code == 2 and "config.json is missing" in err and len(err.strip().splitlines()) == 1


def test_out_of_memory_gives_advice(capsys, tiny_model_dir, small_video, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")

    monkeypatch.setattr(VideoChatFlash, "generate", boom)
    code, _, err = run_cli(
        capsys, "ask", str(small_video), "Q?", "--model", str(tiny_model_dir), "--no-cache"
    )
    assert code == 2 and "out of memory" in err and "--max-frames" in err
    with pytest.raises(torch.OutOfMemoryError):
        main(["--debug", "ask", str(small_video), "Q?", "--model", str(tiny_model_dir), "--no-cache"])


def test_console_script_runs(tiny_model_dir, small_video):
    exe = shutil.which("videochat-flash")
    assert exe, "console script not installed (pip install -e .)"
    proc = subprocess.run(
        [exe, "info", str(small_video), "--model", str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "sampled_frames" in proc.stdout


# ---------------------------------------------------------------------- Python API
def test_encode_once_answer_many(model, small_video, tmp_path):
    cache = TokenCache(tmp_path / "c")
    tokens = model.encode_video(str(small_video), cache=cache)
    assert isinstance(tokens, VideoTokens) and tokens.num_frames == 48 and tokens.tokens.shape[0] == 768
    assert (
        tokens.time_message
        == "\nThe video lasts for 12.00 seconds, and 48 frames are uniformly sampled from it. "
    )
    calls = []
    original = model.encode_pixels
    model.encode_pixels = lambda pixels: calls.append(1) or original(pixels)
    try:
        a, h = model.chat(tokens, "Q1", generation={"max_new_tokens": 2})
        b, _ = model.chat(tokens, "Q2", history=h, generation={"max_new_tokens": 2})
        again = model.encode_video(str(small_video), cache=cache)
    finally:
        del model.encode_pixels
    assert calls == []  # neither chat turn nor the cached second encode ran the encoder
    assert torch.equal(again.tokens, tokens.tokens)


def test_chat_history_prompt(model, small_video, monkeypatch):
    prompts = []
    original = VideoChatFlash.generate

    def spy(self, prompt, visual, *args, **kwargs):
        prompts.append(prompt)
        return original(self, prompt, visual, *args, **kwargs)

    monkeypatch.setattr(VideoChatFlash, "generate", spy)
    tokens = model.encode_video(str(small_video))
    a1, history = model.chat(tokens, "First?", generation={"max_new_tokens": 2})
    model.chat(tokens, "Second?", history=history, generation={"max_new_tokens": 2})
    first_user = "<image>\n" + tokens.time_message.strip() + " First?"
    assert prompts[0] == build_chat_prompt("First?", tokens.time_message)[0]
    assert prompts[1] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{first_user}<|im_end|>\n<|im_start|>assistant\n{a1}<|im_end|>\n"
        "<|im_start|>user\nSecond?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encoding_is_batched_and_matches_whole(model, small_video):
    tokens = model.encode_video(str(small_video))
    from videochat_flash.video import load_video

    loaded = load_video(str(small_video), size=model.config.image_size)
    whole = model.encode_frames(loaded.frames)
    assert torch.allclose(tokens.tokens, whole, atol=1e-5)
    assert tokens.indices == list(loaded.indices)


# ---------------------------------------------------------------------- live streams
def test_stream_over_iterator_sees_only_past_frames(model):
    frames = np.random.default_rng(1).integers(0, 255, (9, 24, 32, 3), dtype=np.uint8)
    gate = threading.Event()

    def source():
        for k, frame in enumerate(frames):
            if k == 4:
                gate.wait(10)
            yield frame

    with model.stream(source()) as session:
        deadline = time.monotonic() + 10
        while session.num_clips < 1 and time.monotonic() < deadline:
            session.update(wait=0.1)
        assert session.num_clips == 1 and not session.finished
        seen = session.tokens()
        assert seen.timestamps == [0.0, 1.0, 2.0, 3.0]
        assert torch.allclose(seen.tokens, model.encode_frames(frames[:4]), atol=1e-5)
        assert isinstance(session.ask("What?", generation={"max_new_tokens": 2}), str)
        gate.set()
        session.wait_until_finished(10)
        assert session.finished and session.num_clips == 2  # 9 frames: 2 whole clips, 1 frame waiting


def test_stream_context_budget_subsamples(model):
    frames = np.zeros((32, 16, 16, 3), dtype=np.uint8)
    with model.stream(iter(frames), max_context_tokens=64 * 3) as session:
        session.wait_until_finished(10)
        tokens = session.tokens()
    assert session.num_clips == 8 and tokens.num_clips == 3
    assert tokens.timestamps[0] == 0.0 and tokens.timestamps[-1] == 31.0
    assert any("kept 3 of 8 clips" in note for note in session.notes)


def test_stream_over_growing_file(model, tmp_path):
    full = write_test_video(tmp_path / "full.ts", seconds=16, fps=2, codec="mpeg2video")
    data = full.read_bytes()
    growing = tmp_path / "live.ts"
    growing.write_bytes(data[: len(data) // 3])
    with model.stream(str(growing), poll_seconds=0.05) as session:
        time.sleep(0.5)
        session.update(wait=0.5)
        early = session.num_clips
        assert early >= 1
        early_last = session.tokens().timestamps[-1]
        assert early_last < 10.0  # only the part written so far
        with growing.open("ab") as f:
            f.write(data[len(data) // 3 :])
        deadline = time.monotonic() + 20
        while session.num_clips < 4 and time.monotonic() < deadline:
            session.update(wait=0.2)
        assert session.num_clips == 4  # 16 frames at 1 per second -> 4 clips
        assert session.tokens().timestamps[-1] > early_last


def test_stream_over_url_needs_permission(model, small_video):
    url = "file://" + str(small_video)
    with pytest.raises(Exception, match="allow_url"):
        with model.stream(url) as session:
            session.wait_until_finished(10)
    with model.stream(url, allow_url=True) as session:
        session.wait_until_finished(20)
        assert session.finished and session.num_clips == 3  # 12 s at 1 frame per second
        assert session.tokens().timestamps[0] == 0.0
