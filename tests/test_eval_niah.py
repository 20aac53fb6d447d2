"""NIAH / multi-hop NIAH (REFERENCE §10): official files, sequence mechanics, teacher forcing, runs, heatmap."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from videochat_flash.data.synth import write_mp4
from videochat_flash.eval import niah
from videochat_flash.model.factory import build_tiny_checkpoint
from videochat_flash.model.videochat import VideoChatFlash

from .conftest import FIXTURES, require_fixtures

skdata = pytest.importorskip("skimage.data")

NIAH_DIR = FIXTURES / "benchmarks" / "NIAH"
QUESTION = "Find the frame of a person. What is shown?\nOptions: (A) x\n(B) y\nOnly give the best option. Best option: ("
IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel", "camera", "cat")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls are much faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("niah_ckpt"), seed=3, layers=3)


@pytest.fixture(scope="module")
def model(ckpt):
    return VideoChatFlash.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("needles")
    for name in IMAGES:
        array = getattr(skdata, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        Image.fromarray(array[..., :3]).save(root / f"{name}.jpg")
    return root


@pytest.fixture(scope="module")
def haystack(tmp_path_factory):
    """40 s at 1 fps, 48x64, every frame different: 40 haystack frames (dynamic_fps1), fewer than 48."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(20 + 5 * i, 25, (48, 64, 3)), 0, 255).astype(np.uint8) for i in range(40)]
    path = tmp_path_factory.mktemp("hay") / "haystack.mp4"
    write_mp4(path, frames, fps=1.0)
    return path


def single_needles(images, n=2):
    return [niah.SingleHopNeedle(str(i), images / f"{IMAGES[i]}.jpg", QUESTION, "A") for i in range(n)]


# ---------------------------------------------------------------------- official files
def _touch_images(root, records, key):
    for r in records:
        for name in r[key] if isinstance(r[key], list) else [r[key]]:
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()


def test_official_files_parse(tmp_path):
    require_fixtures(NIAH_DIR)
    single_file, multi_file = (
        NIAH_DIR / "niah-coco-singlehop_20.json",
        NIAH_DIR / "niah-coco-multihop-100.json",
    )
    assert niah.needle_kind(single_file) == "single-hop" and niah.needle_kind(multi_file) == "multi-hop"
    with pytest.raises(niah.NiahError, match="not found under"):
        niah.load_single_hop(single_file, tmp_path)
    _touch_images(tmp_path, json.loads(single_file.read_text()), "image")
    _touch_images(tmp_path, json.loads(multi_file.read_text()), "images")

    single = niah.load_needles(single_file, tmp_path)
    assert len(single) == 20 and isinstance(single[0], niah.SingleHopNeedle)
    assert [n.id for n in single] == [str(i) for i in range(20)]
    assert single[0].image == tmp_path / "single/COCO_val2014_000000152808.jpg"
    for n in single:
        assert n.question.startswith("Find the frame of ") and n.question.endswith(niah.ANSWER_SUFFIX)
        assert n.answer in "ABCD" and len(n.answer) == 1

    multi = niah.load_needles(multi_file, tmp_path)
    assert len(multi) == 100 and isinstance(multi[0], niah.MultiHopNeedle)
    assert Counter(len(n.images) for n in multi) == {7: 41, 6: 28, 5: 31}
    for n in multi:
        assert niah.MULTI_HOP_QUESTION1 in n.question1 and niah.MULTI_HOP_QUESTION2 in n.question2
        assert n.question1.endswith(niah.ANSWER_SUFFIX) and n.question2.endswith(niah.ANSWER_SUFFIX)
        assert n.answer1 in "ABCD" and n.answer2 in "ABCD"
        assert sum("niah_" not in p.name for p in n.images) == 1  # one plain final image


# ---------------------------------------------------------------------- layouts
def test_depths_and_layouts():
    assert niah.DEFAULT_DEPTHS[3] == 0.6000000000000001  # numpy.arange(0, 1.2, 0.2) as the original
    assert niah.DEFAULT_FRAMES == tuple(range(1000, 10001, 1000))
    assert niah.single_hop_layout(1000, niah.DEFAULT_DEPTHS[3]) == [
        ("haystack", 0, 600),
        ("needle", 0),
        ("haystack", 600, 1000),
    ]
    assert niah.single_hop_layout(10, 0.35)[0] == ("haystack", 0, 3)
    assert niah.single_hop_layout(10, 0.35, align=4)[0] == ("haystack", 0, 0)  # pixel variant: clip boundary
    layout = niah.multi_hop_layout(1000, 7)
    assert [x for x in layout if x[0] == "needle"] == [("needle", k) for k in range(7)]
    hay = [x[1:] for x in layout if x[0] == "haystack"]
    assert hay == [(0, 166), (166, 333), (333, 500), (500, 666), (666, 833), (833, 1000)]
    assert layout[0] == ("needle", 0) and layout[-1] == ("needle", 6)
    assert niah.layout_frames(layout) == 1000 + 7 * 4
    with pytest.raises(niah.NiahError):
        niah.multi_hop_layout(100, 1)


# ---------------------------------------------------------------------- sequence mechanics
def test_single_hop_sequence_mechanics(model, images):
    d = model.config.llm.hidden_size
    frames, per = 10, 16
    hay = torch.arange(frames * per * d, dtype=torch.float32).reshape(frames, per, d) / 1e4
    needle = niah.needle_tokens(model, images / "coffee.jpg")
    assert needle.shape == (64, d)
    builder = niah.SequenceBuilder(model)
    assert niah.PRE == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert niah.POST == "<|im_end|>\n<|im_start|>assistant\n"
    tok = model.tokenizer
    pre, post, q_ids = tok.encode(niah.PRE), tok.encode(niah.POST), tok.encode(QUESTION)
    assert -200 not in pre + post and "<image>" not in niah.PRE + niah.POST

    num_frames, depth = 24, 0.5  # 24 > 10 haystack frames: repeated
    seq = builder.build(niah.single_hop_layout(num_frames, depth), hay, [needle], QUESTION, "A")
    q = int(depth * num_frames)
    assert seq.prompt_len == len(pre) + per * q + 64 + per * (num_frames - q) + len(q_ids) + len(post)
    assert [s.name for s in seq.segments] == [
        "pre",
        f"haystack[0:{q}]",
        "needle 0",
        f"haystack[{q}:{num_frames}]",
        "question",
        "post",
        "answer",
    ]
    start = len(pre) + per * q
    assert seq.needle_spans() == [(start, start + 64)]
    assert seq.visual == (len(pre), per * num_frames + 64)
    torch.testing.assert_close(seq.embeds[start : start + 64], needle)
    # frame i of the sequence is haystack frame i mod 10
    for i in (0, 9, 10, 11, 23):
        pos = len(pre) + per * i + (64 if i >= q else 0)
        torch.testing.assert_close(seq.embeds[pos : pos + per], hay[i % frames])
    embed = model.llm.model.embed_tokens
    torch.testing.assert_close(seq.embeds[: len(pre)], embed(torch.tensor(pre)))
    torch.testing.assert_close(seq.embeds[-len(post) :], embed(torch.tensor(post)))
    n_ans = len(tok.encode("A"))
    assert seq.score_positions == list(range(seq.prompt_len - 1, seq.prompt_len + n_ans - 1))
    # depth 0 and 1: needle first / last in the visual block
    first = builder.build(niah.single_hop_layout(num_frames, 0.0), hay, [needle], QUESTION, "A")
    last = builder.build(niah.single_hop_layout(num_frames, 1.0), hay, [needle], QUESTION, "A")
    assert first.needle_spans() == [(len(pre), len(pre) + 64)]
    assert last.needle_spans() == [(len(pre) + per * num_frames, len(pre) + per * num_frames + 64)]


def test_teacher_forcing_equals_full_forward(model, images):
    d = model.config.llm.hidden_size
    hay = torch.randn(6, 16, d, generator=torch.Generator().manual_seed(0))
    needle = niah.needle_tokens(model, images / "astronaut.jpg")
    builder = niah.SequenceBuilder(model)
    answer = "B) two words"  # several answer tokens
    seq = builder.build(niah.single_hop_layout(12, 0.4), hay, [needle], QUESTION, answer)
    assert len(seq.answer_ids) > 2
    preds = niah.teacher_forced_predictions(model.llm, seq)
    chunked = niah.teacher_forced_predictions(model.llm, seq, chunk_tokens=50)
    with torch.inference_mode():
        full = torch.cat([seq.embeds, model.llm.model.embed_tokens(torch.tensor(seq.answer_ids))])
        logits, _, _ = model.llm(full[None])
    expected = logits[0, seq.score_positions].argmax(-1).tolist()
    assert preds == expected and chunked == expected
    assert niah.is_correct("(B)", "B") and niah.is_correct("b", "B") and not niah.is_correct("A", "B")
    assert niah.normalise_prediction("(A) Apple") == "a apple"


def test_yarn_switch(tmp_path, ckpt):
    m = VideoChatFlash.from_pretrained(ckpt)
    x = torch.randn(1, 40, m.config.llm.hidden_size, generator=torch.Generator().manual_seed(1))
    plain = m.llm.prefill(x, m.llm.new_cache()).logits
    scaling = niah.apply_yarn(m, 4)
    assert scaling == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert m.config.llm.rope_scaling == scaling and m.llm.cfg.rope_scaling == scaling
    assert m.llm.rope.attention_scaling == pytest.approx(0.1 * np.log(4) + 1)
    yarn = m.llm.prefill(x, m.llm.new_cache()).logits
    assert not torch.allclose(plain, yarn)
    assert niah.apply_yarn(m, None) is None
    torch.testing.assert_close(m.llm.prefill(x, m.llm.new_cache()).logits, plain)


# ---------------------------------------------------------------------- end-to-end runs
def test_run_single_hop_outputs_and_resume(model, images, haystack, tmp_path, monkeypatch):
    out = tmp_path / "out"
    needles = single_needles(images)
    res = niah.run_niah(
        model, haystack, needles, frames=(16, 48), depths=(0, 0.5, 1.0), output_dir=out, progress=False
    )
    assert res["kind"] == "single-hop" and res["variant"] == "embedding"
    assert res["haystack_frames"] == 40 and res["haystack_repeated"] is True
    assert set(res["accuracy"]) == {"16", "48"} and set(res["accuracy"]["48"]) == {"0", "0.5", "1"}
    assert all(v in (0.0, 0.5, 1.0) for row in res["accuracy"].values() for v in row.values())
    assert res["max_sequence_length"] > 16 * 48
    assert json.loads((out / "niah.json").read_text()) == json.loads(json.dumps(res))
    lines = (out / "niah.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["header"]["kind"] == "single-hop" and len(lines) == 1 + 2 * 3 * 2
    png = Image.open(out / "niah_heatmap.png")
    assert png.size[0] > 200 and png.size[1] > 150
    # the heatmap colours cells red -> green
    assert (
        niah.score_color(0.0)[0] > niah.score_color(0.0)[1]
        and niah.score_color(1.0)[1] > niah.score_color(1.0)[0]
    )

    def boom(*a, **k):
        raise AssertionError("resumed run must not recompute")

    monkeypatch.setattr(niah, "teacher_forced_predictions", boom)
    again = niah.run_niah(
        model, haystack, needles, frames=(16, 48), depths=(0, 0.5, 1.0), output_dir=out, progress=False
    )
    assert again["accuracy"] == res["accuracy"] and again["haystack_frames"] == 40
    assert again["max_sequence_length"] == res["max_sequence_length"]
    with pytest.raises(niah.NiahError, match="other settings"):
        niah.run_niah(model, haystack, needles[:1], frames=(16,), depths=(0,), output_dir=out, progress=False)


def test_scores_aggregate_per_cell(model, images, haystack, monkeypatch):
    """An oracle that is right only when the needle is at depth 0: accuracy 1 there, 0 elsewhere."""
    needles = single_needles(images)

    def oracle(llm, seq, **kw):
        at_start = seq.needle_spans()[0][0] == seq.visual[0]
        return list(seq.answer_ids) if at_start else [i + 1 for i in seq.answer_ids]

    monkeypatch.setattr(niah, "teacher_forced_predictions", oracle)
    res = niah.run_niah(model, haystack, needles, frames=(8, 16), depths=(0, 1.0), progress=False)
    assert res["accuracy"] == {"8": {"0": 1.0, "1": 0.0}, "16": {"0": 1.0, "1": 0.0}}
    assert res["overall"] == 0.5


def test_pixel_variant_inserts_needle_frames(model, images, haystack, monkeypatch):
    from videochat_flash.inference import session

    calls = []
    real_chat = session.chat

    def spy(m, video, question, **kw):
        calls.append((np.asarray(video), question, kw))
        return real_chat(m, video, question, **kw)

    monkeypatch.setattr(session, "chat", spy)
    needles = single_needles(images, 1)
    res = niah.run_niah(model, haystack, needles, frames=(16,), depths=(0, 0.5), pixel=True, progress=False)
    assert res["variant"] == "pixel" and set(res["accuracy"]["16"]) == {"0", "0.5"}
    size = model.config.image_size
    needle = niah.needle_frame(images / "astronaut.jpg", size)
    for (video, question, kw), q in zip(calls, (0, 8), strict=True):
        assert video.shape == (16 + 4, size, size, 3) and question == QUESTION
        assert kw["generation"] == {"max_new_tokens": len(model.tokenizer.encode("A")), "do_sample": False}
        assert all((video[q + k] == needle).all() for k in range(4))
        others = [i for i in range(20) if not q <= i < q + 4]
        assert not any((video[i] == needle).all() for i in others)


def test_multi_hop_build_and_run(model, images, haystack, tmp_path):
    entries = [{"image": f"{n}.jpg", "caption": f"a picture of {n}"} for n in IMAGES]
    entries[0].update(
        question="what is shown", options=["a person", "a cup", "a cat", "a rocket"], answer="a person"
    )
    path = niah.build_multi_hop(
        entries, tmp_path / "set", images=images, num_samples=3, hops=2, distractors=2, seed=1
    )
    records = json.loads(path.read_text())
    assert len(records) == 3
    for r in records:
        assert len(r["images"]) == 2 + 1 + 2 and sorted(r["chain"]) == sorted(set(r["chain"]))
        chain = [r["images"][i] for i in r["chain"]]
        assert [p.startswith("multi/niah_") for p in chain] == [True, True, False]
        assert r["question1"].startswith("Find the frame of a picture of ")
        assert niah.MULTI_HOP_QUESTION1 in r["question1"] and r["question1"].endswith(niah.ANSWER_SUFFIX)
        final = chain[-1].removeprefix("multi/").removesuffix(".jpg")
        letter = r["answer1"]
        assert f"({letter}) a picture of {final}\n" in r["question1"]
        assert (
            (r["answer2"] == "A" and "what is shown" in r["question2"])
            if final == IMAGES[0]
            else "question2" not in r
        )
    # the rendered instruction sits in a white banner at the top of the chain images
    first = np.asarray(Image.open(tmp_path / "set" / chain[0]))
    assert (first[:2] > 200).all()

    needles = niah.load_multi_hop(path, tmp_path / "set")
    assert all(len(n.images) == 5 for n in needles)
    builder = niah.SequenceBuilder(model)
    d = model.config.llm.hidden_size
    hay = torch.zeros(40, 16, d)
    tokens = [niah.needle_tokens(model, p) for p in needles[0].images]
    layout = niah.multi_hop_layout(32, 5)
    seq = builder.build(layout, hay, tokens, needles[0].question1, needles[0].answer1)
    pre = len(model.tokenizer.encode(niah.PRE))
    spans = seq.needle_spans()
    assert spans == [(pre + 64 * k + 16 * 8 * k, pre + 64 * (k + 1) + 16 * 8 * k) for k in range(5)]
    for (a, b), t in zip(spans, tokens, strict=True):
        torch.testing.assert_close(seq.embeds[a:b], t)

    res = niah.run_niah(
        model, haystack, needles[:2], frames=(16, 24), output_dir=tmp_path / "mh", progress=False
    )
    assert res["kind"] == "multi-hop" and set(res["per_frames"]) == {"16", "24"}
    row = res["per_frames"]["16"]
    assert row["count"] == 2 and row["both"] + row["only_caption"] + row["only_qa"] + row["none"] == 2
    assert (tmp_path / "mh" / "niah_heatmap.png").is_file()


def test_render_instruction_and_single_hop_builder(images, tmp_path):
    img = niah.render_instruction(images / "rocket.jpg", "Find the frame of a long caption " * 3)
    src = np.asarray(Image.open(images / "rocket.jpg"))
    out = np.asarray(img)
    assert out.shape == src.shape and (out[:2] == 255).all()
    assert (out[: out.shape[0] // 4] < 100).any()  # dark text pixels inside the banner
    assert np.array_equal(out[-10:], src[-10:])  # the rest of the image is untouched
    entries = [
        {
            "image": "coffee.jpg",
            "caption": "a cup of coffee.",
            "question": "what colour",
            "options": ["red", "white"],
            "answer": "white",
        }
    ]
    path = niah.build_single_hop(entries, tmp_path / "s.json", images=images)
    (rec,) = json.loads(path.read_text())
    assert rec == {
        "question": "Find the frame of a cup of coffee. what colour\nOptions: (A) red\n(B) white"
        + niah.ANSWER_SUFFIX,
        "answer": "B",
        "image": "coffee.jpg",
        "id": 0,
    }
    assert niah.load_single_hop(path, images)[0].image == images / "coffee.jpg"
