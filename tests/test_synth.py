"""Synthetic data generator: determinism, annotation format, pixels agree with answers, NIAH, scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from videochat_flash.data import synth
from videochat_flash.data.scoring import extract_letter, iou, parse_interval, score_mc, summarize
from videochat_flash.data.shapes import (
    COLORS,
    DIRECTIONS,
    NEEDLE_BACKGROUND,
    NEEDLE_COLORS,
    PALETTE,
    SHAPES,
    SIZES,
    object_position,
)
from videochat_flash.data.tasks import COUNTS, LETTERS, MC_TASKS, MULTI_TURN_TASK, PER_OBJECT_TASKS

TINY = dict(
    num_samples=3,
    num_long=2,
    num_niah=2,
    num_single=2,
    size=64,
    fps=4,
    short_seconds=(4, 6),
    long_seconds=(8, 10),
    needle_seconds=1,
)


def _gen(root: Path, seed: int) -> Path:
    synth.generate_dataset(root, seed, **TINY)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _gen(tmp_path_factory.mktemp("synth_a"), 5)


@pytest.fixture(scope="module")
def all_records(data) -> list[dict]:
    return [r for p in sorted((data / "annotations").glob("*.jsonl")) for r in synth.load_records(p)]


@pytest.fixture(scope="module")
def records(all_records) -> list[dict]:
    """The answerable one-question records (the multi-turn ones regroup them, see `multi_records`; questions about
    an absent subject are in `absent_records`)."""
    return [r for r in all_records if r["task"] != MULTI_TURN_TASK and not r.get("absent")]


@pytest.fixture(scope="module")
def absent_records(all_records) -> list[dict]:
    return [r for r in all_records if r.get("absent")]


@pytest.fixture(scope="module")
def multi_records(all_records) -> list[dict]:
    return [r for r in all_records if r["task"] == MULTI_TURN_TASK]


_FRAMES: dict[str, np.ndarray] = {}


def decode(path: Path) -> np.ndarray:
    key = str(path)
    if key not in _FRAMES:
        with av.open(key) as c:
            _FRAMES[key] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return _FRAMES[key]


def _near(pixel, color, tol=45) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(color)).max() <= tol)


def _pixel_at(frames: np.ndarray, obj: dict, frame: int) -> np.ndarray:
    x, y = object_position(obj, frame)
    return frames[frame, int(round(y)), int(round(x))]


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_data_different_seed_differs(data, tmp_path):
    again = _gen(tmp_path / "b", 5)
    names = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file() and p.suffix != ".yaml")
    assert names == sorted(
        p.relative_to(again) for p in again.rglob("*") if p.is_file() and p.suffix != ".yaml"
    )
    for name in names:
        if name.suffix in (".jsonl", ".json"):
            assert (data / name).read_bytes() == (again / name).read_bytes(), name
        else:  # mp4: decoded frames identical (and bytes too with the same encoder build)
            assert np.array_equal(decode(data / name), decode(again / name)), name
            assert (data / name).read_bytes() == (again / name).read_bytes(), name

    other = tmp_path / "c"
    synth.generate_dataset(other, 6, stage="stage1", **TINY)
    a = (data / "annotations/short_caption.jsonl").read_bytes()
    assert a != (other / "annotations/short_caption.jsonl").read_bytes()
    v = "videos/short/000000.mp4"
    fa, fb = decode(data / v), decode(other / v)
    assert fa.shape != fb.shape or not np.array_equal(fa, fb)


# -------------------------------------------------------------------------------------------- format


def test_layout_yaml_and_manifest(data):
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["videos"] == {"single": 2, "short": 3, "long": 2, "niah": 2}
    assert manifest["annotations_version"] == synth.ANNOTATIONS_VERSION  # the demo builder's reuse check reads it
    for stage in synth.STAGES:
        mix = yaml.safe_load((data / f"{stage}.yaml").read_text())
        assert mix["datasets"], stage
        for entry in mix["datasets"]:  # paths relative to the YAML's folder
            assert entry == {"json_path": entry["json_path"], "sampling_strategy": "all", "data_root": "."}
            assert (data / entry["json_path"]).is_file()
    stage1 = yaml.safe_load((data / "stage1.yaml").read_text())["datasets"]
    assert [Path(e["json_path"]).name for e in stage1] == ["short_caption.jsonl"]
    stage3 = [Path(e["json_path"]).name for e in yaml.safe_load((data / "stage3.yaml").read_text())["datasets"]]
    assert {"long_grounding.jsonl", "niah_niah.jsonl", "short_mc_color.jsonl"} <= set(stage3)
    # up-sampled by listing: needles and counts; every other file once
    repeats = {"niah_niah.jsonl": synth.NIAH_REPEAT}
    repeats |= {f"{pool}_mc_count.jsonl": synth.COUNT_REPEAT for pool in ("short", "long")}
    assert min(repeats.values()) > 1
    assert all(stage3.count(name) == repeats.get(name, 1) for name in stage3)
    with av.open(str(data / "videos/short/000000.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt, s.width, s.height) == (
            "h264",
            "yuv420p",
            64,
            64,
        )
        assert float(s.average_rate) == 4


# Each question type lists its whole answer vocabulary, always in the same order.
VOCABULARY = {
    "mc_color": COLORS,
    "mc_order": COLORS,
    "mc_shape": SHAPES,
    "mc_direction": DIRECTIONS,
    "mc_count": COUNTS,
    "shape": SHAPES,
    "color": NEEDLE_COLORS,
}


def test_records_well_formed(data, records):
    tasks = {r["task"] for r in records}
    assert {"caption", "grounding", "niah", *MC_TASKS} <= tasks
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        assert synth.record_problems(r, data) == [], r["id"]
        human, gpt = r["conversations"]
        assert human["value"] == "<image>\n" + r["prompt"] and gpt["value"] == r["answer"]
        if "answer_letter" in r:
            opts, k = r["options"], r["answer_index"]
            assert opts == list(VOCABULARY[r["task"] if r["task"] != "niah" else r["needle"]["question"]])
            assert r["answer_letter"] == LETTERS[k] and extract_letter(r["answer"], opts) == LETTERS[k]
            if r["task"] in PER_OBJECT_TASKS:  # the subject from the question, right before the attribute
                assert r["answer"] == f"The {r['subject']} {opts[k]} ({LETTERS[k]})."
                assert r["question"].endswith(f" {r['subject']}?")
            else:
                assert r["answer"] == f"Answer: {opts[k]} ({LETTERS[k]})."
            assert r["prompt"].startswith("Option:\n") and r["prompt"].endswith("\nQuestion: " + r["question"])
            assert f"({LETTERS[k]}) {opts[k]}\n" in r["prompt"]
        if r["task"] == "grounding":
            s, e = r["timestamp"]
            assert 0 <= s < e <= r["duration"]
            assert parse_interval(r["answer"]) == (s, e)
            assert "seonds" in r["prompt"]
        if r["task"] == "niah":
            assert 0 <= r["depth"] <= 1 and r["haystack_seconds"] >= 8
        if r["task"] == "caption":
            assert r["prompt"] == "Describe the video."
            names = [f"{o['color']} {o['shape']}" for o in r["meta"]["objects"]]
            positions = [r["answer"].index(n) for n in names]
            assert positions == sorted(positions)  # order of appearance


def test_curriculum_pool_has_one_bigger_shape(data, records):
    single = [r for r in records if r["pool"] == "single"]
    assert {r["task"] for r in single} == {"caption", "mc_color", "mc_shape", "mc_direction"}
    for r in single:
        (obj,) = r["meta"]["objects"]
        assert obj["radius"] == round(SIZES[obj["size"]] * synth.SINGLE_SCALE * r["meta"]["size"])
    stage0 = yaml.safe_load((data / "stage0.yaml").read_text())["datasets"]
    assert {Path(e["json_path"]).name for e in stage0} == {
        f"single_{t}.jsonl" for t in ("caption", "mc_color", "mc_shape", "mc_direction")
    } | {"short_caption.jsonl"} | {f"short_{t}.jsonl" for t in MC_TASKS}


def test_mc_phase_mixture_holds_only_multiple_choice(data):
    mix = yaml.safe_load((data / "stage0_mc.yaml").read_text())["datasets"]
    assert [Path(e["json_path"]).name for e in mix] == [
        f"single_{MULTI_TURN_TASK}.jsonl",
        f"single_{MULTI_TURN_TASK}.jsonl",
        f"short_{MULTI_TURN_TASK}.jsonl",
    ]


def test_direction_phase_mixture_replays_the_mc_phase(data):
    mix = yaml.safe_load((data / "stage0_dir.yaml").read_text())["datasets"]
    assert [Path(e["json_path"]).name for e in mix] == [
        "single_mc_direction.jsonl",
        "short_mc_direction.jsonl",
        f"single_{MULTI_TURN_TASK}.jsonl",
        f"short_{MULTI_TURN_TASK}.jsonl",
    ]


def test_needle_phase_mixture_replays_the_mc_phase_and_adds_long_videos(data):
    mix = yaml.safe_load((data / "stage0_niah.yaml").read_text())["datasets"]
    assert [Path(e["json_path"]).name for e in mix] == [
        f"niah_{MULTI_TURN_TASK}.jsonl",
        f"niah_{MULTI_TURN_TASK}.jsonl",
        f"single_{MULTI_TURN_TASK}.jsonl",
        f"short_{MULTI_TURN_TASK}.jsonl",
    ] + [f"long_{MULTI_TURN_TASK}.jsonl"] * synth.LONG_MC_REPEAT


def test_multi_turn_records_ask_every_question_of_their_video(data, records, absent_records, multi_records):
    """One per training video: exactly that video's multiple-choice records (absent subjects too), each turn its
    question and answer, the video placeholder once (first turn); the order is drawn per video."""
    by_id = {r["id"]: r for r in records + absent_records}
    mc_of_video: dict[str, set[str]] = {}
    for r in records + absent_records:
        if r["task"] in MC_TASKS and r["pool"] in ("single", "short", "long"):
            mc_of_video.setdefault(r["video"], set()).add(r["id"])
    scene_multi = [m for m in multi_records if m["pool"] != "niah"]
    assert sorted(m["video"] for m in scene_multi) == sorted(mc_of_video)
    orders = set()
    for m in scene_multi:
        assert synth.record_problems(m, data) == [], m["id"]
        assert set(m["questions"]) == mc_of_video[m["video"]] and len(m["questions"]) == len(set(m["questions"]))
        turns = m["conversations"]
        assert len(turns) == 2 * len(m["questions"])
        for k, qid in enumerate(m["questions"]):
            q = by_id[qid]
            human, gpt = turns[2 * k], turns[2 * k + 1]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"] == ("<image>\n" if k == 0 else "") + q["prompt"] and gpt["value"] == q["answer"]
        orders.add(tuple(by_id[q]["task"] for q in m["questions"]))
    assert len(orders) > 1


def test_needle_videos_ask_shape_and_colour_in_one_conversation(data, records, multi_records):
    """Training needle videos: the one-question record (stage 3) and a two-turn record asking the needle's shape
    and colour, answered from the needle itself; evaluation needle videos keep one question."""
    niah = {r["video"]: r for r in records if r["task"] == "niah" and r["pool"] == "niah"}
    multi = [m for m in multi_records if m["pool"] == "niah"]
    assert niah and sorted(m["video"] for m in multi) == sorted(niah)
    for m in multi:
        needle = niah[m["video"]]["needle"]
        questions = [t["value"] for t in m["conversations"][0::2]]
        answers = [t["value"] for t in m["conversations"][1::2]]
        assert questions[0].startswith("<image>\n") and not questions[1].startswith("<image>")
        kinds = ["shape" if "What shape" in q else "color" for q in questions]
        assert sorted(kinds) == ["color", "shape"]
        for kind, answer in zip(kinds, answers, strict=True):
            assert answer.startswith(f"Answer: {needle[kind]} (")
        assert niah[m["video"]]["id"] in m["questions"]


def test_multi_turn_records_pass_the_training_data_check(data):
    from videochat_flash.train.data import check_annotations

    for pool in ("single", "short", "long", "niah"):
        assert check_annotations([data / "annotations" / f"{pool}_{MULTI_TURN_TASK}.jsonl"], template="qwen_2") == []


def test_training_scenes_ask_about_subjects_from_the_whole_vocabulary(records, absent_records):
    """Colour and shape questions: per training scene and task, one about an object in view plus one more per object
    about distinct subjects drawn from the whole vocabulary (`tasks.subject_records`), so the video alone does not
    say which subject is asked; those in view are answered with the object's attribute, the others as absent. The
    other tasks keep one question per video."""
    from collections import defaultdict

    seen_present_extra = seen_absent = 0
    for pool in ("single", "short", "long"):
        for task in PER_OBJECT_TASKS:
            by_video = defaultdict(list)
            for r in records + absent_records:
                if r["task"] == task and r["pool"] == pool:
                    by_video[r["video"]].append(r)
            assert by_video, (pool, task)
            field = "shape" if task == "mc_color" else "color"
            for rs in by_video.values():
                objects = rs[0]["meta"]["objects"]
                assert len(rs) == len(objects) + 1
                assert len({r["subject"] for r in rs}) == len(rs)
                assert not rs[0].get("absent")  # the first one asks about an object in view
                for r in rs:
                    assert r["question"].endswith(f" {r['subject']}?") and r["answer"].startswith(f"The {r['subject']} ")
                    if r.get("absent"):
                        assert r["subject"] not in {o[field] for o in objects} and "answer_letter" not in r
                        assert r["answer"].endswith(" is not in the video.")
                        seen_absent += 1
                    else:
                        obj = objects[r["target"]]
                        answer_field = "color" if task == "mc_color" else "shape"
                        assert obj[field] == r["subject"] and r["options"][r["answer_index"]] == obj[answer_field]
                        seen_present_extra += r is not rs[0]
        for task in ("mc_direction", "mc_count", "grounding"):
            videos = [r["video"] for r in records if r["task"] == task and r["pool"] == pool]
            assert len(videos) == len(set(videos)), (pool, task)
    assert seen_present_extra and seen_absent


def test_absent_subjects_are_asked_in_the_multi_turn_records(absent_records, multi_records):
    assert {(r["pool"], r["task"]) for r in absent_records} == {
        (p, t) for p in ("single", "short", "long") for t in PER_OBJECT_TASKS
    }
    asked = {q for m in multi_records for q in m["questions"]}
    assert {r["id"] for r in absent_records} <= asked


def test_refresh_mixtures_serves_data_generated_before_a_mixture_existed(data, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(data, old, ignore=shutil.ignore_patterns("videos"))
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["stages"]["stage0_mc"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "stage0_mc.yaml").unlink()
    refreshed = synth.refresh_mixtures(old)
    assert (old / "stage0_mc.yaml").read_text() == (data / "stage0_mc.yaml").read_text()
    assert refreshed == json.loads((data / "manifest.json").read_text())
    assert json.loads((old / "manifest.json").read_text()) == refreshed


def test_synthetic_records_mention_correct_answer(records):
    for r in records:
        objs = r.get("meta", {}).get("objects", [])
        if r["task"] in ("mc_color", "mc_shape", "mc_direction"):
            o = objs[r["target"]]
            field = {"mc_color": "color", "mc_shape": "shape", "mc_direction": "direction"}[r["task"]]
            assert r["options"][r["answer_index"]] == o[field]
        elif r["task"] == "mc_count":
            assert r["options"][r["answer_index"]] == str(len(objs))
        elif r["task"] == "mc_order":
            starts = [o["start"] for o in objs]
            target = objs[r["target"]]["start"]
            assert target == (max(starts) if "last" in r["question"] else min(starts))
            assert starts.count(target) == 1
            assert r["options"][r["answer_index"]] == objs[r["target"]]["color"]


# ------------------------------------------------------------------------------- pixels match answers


def test_video_shows_the_answer(data, records):
    checked = 0
    for r in records:
        if r["task"] not in ("mc_color", "mc_shape", "mc_direction", "grounding"):
            continue
        frames = decode(data / r["video"])
        assert len(frames) == r["meta"]["num_frames"]
        o = r["meta"]["objects"][r["target"]]
        f0, f1 = o["start_frame"], o["end_frame"]
        mid = (f0 + f1 - 1) // 2
        assert _near(_pixel_at(frames, o, mid), PALETTE[o["color"]]), (r["id"], mid)
        if r["task"] == "mc_direction":  # the colour blob's centroid moves the stated way
            cents = []
            for f in (f0, f1 - 1):
                mask = np.abs(frames[f].astype(int) - np.array(PALETTE[o["color"]])).max(-1) <= 45
                ys, xs = np.nonzero(mask)
                cents.append((xs.mean(), ys.mean()))
            dx, dy = cents[1][0] - cents[0][0], cents[1][1] - cents[0][1]
            moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert moved == r["options"][r["answer_index"]], r["id"]
        if r["task"] == "grounding":
            s, e = r["timestamp"]
            fps = r["meta"]["fps"]
            assert f0 == round(s * fps) and f1 == min(len(frames), round(e * fps))
            assert _near(_pixel_at(frames, o, f0), PALETTE[o["color"]])
            assert _near(_pixel_at(frames, o, f1 - 1), PALETTE[o["color"]])
            if f0 > 0:
                assert not _near(_pixel_at(frames, o, f0 - 1), PALETTE[o["color"]])
            if f1 < len(frames):
                assert not _near(_pixel_at(frames, o, f1), PALETTE[o["color"]])
        checked += 1
    assert checked >= 10


def test_niah_needle_at_recorded_depth(data, records):
    niah = [r for r in records if r["task"] == "niah"]
    assert niah
    for r in niah:
        frames = decode(data / r["video"])
        fps = r["meta"]["fps"]
        a, b = r["needle"]["frames"]
        assert b - a == 4  # needle_seconds=1 at 4 fps
        assert len(frames) == round(r["haystack_seconds"] * fps) + (b - a)
        assert a == round(round(r["depth"] * r["haystack_seconds"]) * fps)
        assert r["needle"]["start"] == a / fps and r["needle"]["end"] == b / fps
        is_needle = [_near(f[1, 1], NEEDLE_BACKGROUND, 20) for f in frames]
        assert [i for i, x in enumerate(is_needle) if x] == list(range(a, b))
        c = frames.shape[1] // 2
        assert _near(frames[a, c, c], PALETTE[r["needle"]["color"]])
        key = r["needle"]["question"]
        assert r["options"][r["answer_index"]] == r["needle"][key]


def test_eval_set_grid_and_evaluate(tmp_path):
    path = synth.make_eval_set(
        tmp_path,
        3,
        2,
        size=64,
        short_seconds=(4, 5),
        long_seconds=(8, 8),
        train_max_seconds=2,
        niah_multipliers=(1, 2),
        niah_depths=(0.0, 1.0),
        needle_seconds=1,
    )
    recs = synth.load_records(path)
    niah = [r for r in recs if r["task"] == "niah"]
    assert sorted((r["haystack_seconds"], r["depth"]) for r in niah) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert {r["task"] for r in recs} >= {"mc_color", "grounding", "niah"}
    for r in recs:
        assert synth.record_problems(r, tmp_path) == []
    asked = [(r["video"], r["task"]) for r in recs]
    assert len(asked) == len(set(asked))  # one question per video and task: per-object questions are for training
    assert MULTI_TURN_TASK not in {r["task"] for r in recs}  # so are the multi-turn records, needle videos' too

    seen = []

    def oracle(rec, video):
        seen.append(video)
        return rec["answer"]

    res = synth.evaluate(tmp_path, oracle, progress=False, predictions_path=tmp_path / "pred.jsonl")
    assert Path(seen[0]).is_absolute() and Path(seen[0]).is_file()
    assert res["mc_accuracy"] == 1.0 and res["grounding_r@0.5"] == 1.0 and res["grounding_miou"] == 1.0
    assert res["niah"] == {"2": {"0": 1.0, "1": 1.0}, "4": {"0": 1.0, "1": 1.0}}
    assert all(v == 1.0 for v in res["per_task"].values())
    assert len(synth.load_records(tmp_path / "pred.jsonl")) == len(recs)
    res = synth.evaluate(tmp_path, lambda rec, video: "", progress=False)
    assert res["mc_accuracy"] == 0.0 and res["grounding_r@0.5"] == 0.0


def test_eval_set_single_shape_videos_are_reported_apart(tmp_path):
    synth.make_eval_set(
        tmp_path, 3, 1, size=64, short_seconds=(4, 5), long_seconds=(8, 8), niah_multipliers=(), num_single=2
    )
    recs = synth.load_records(tmp_path / "eval.jsonl")
    single = [r for r in recs if r["task"].startswith("single_")]
    assert sorted({r["task"] for r in single}) == ["single_mc_color", "single_mc_direction", "single_mc_shape"]
    assert all(len(r["meta"]["objects"]) == 1 for r in single)

    def only_single_right(rec, video):
        return rec["answer"] if rec["task"].startswith("single_") else ""

    res = synth.evaluate(tmp_path, only_single_right, progress=False)
    assert res["per_task"]["single_mc_shape"] == 1.0 and res["mc_accuracy"] == 0.0


def test_cli_stage_subset(tmp_path):
    argv = ["--out", str(tmp_path), "--seed", "1", "--stage", "stage1", "--num-samples", "1", "--size", "48"]
    assert synth.main([*argv, "--short-seconds", "4,4", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["stage1.yaml"]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["short"]
    assert synth.main(["--out", str(tmp_path), "--size", "7", "--quiet"]) == 2


# ------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "text,letter",
    [
        ("(B) blue", "B"),
        ("b", "B"),
        (" C. ", "C"),
        ("D) square", "D"),
        ("(a)", "A"),
        ("The answer is (C).", "C"),
        ("Best option: (E) star", "E"),
        ("Answer: D", "D"),
        ("A", "A"),
        ("C and D", "C"),
        ("A red circle", None),
        ("", None),
        ("I do not know", None),
    ],
)
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


def test_score_mc_with_options():
    opts = ["blue circle", "red circle", "green star", "white cross"]
    assert score_mc("A red circle", "B", opts)
    assert score_mc("red circle.", "B", opts)
    assert not score_mc("circle", "B", opts)  # ambiguous: two options contain it
    assert score_mc("(B)", "(B)") and not score_mc("(B)", "A")


@pytest.mark.parametrize(
    "text,interval",
    [
        ("The event happens in the 3.0 - 9.5 seconds.", (3.0, 9.5)),
        ("The event 'x' happens in the 24.3 - 30.4 seonds", (24.3, 30.4)),
        ("from 12s to 4s", (4.0, 12.0)),
        ("between 2 and 7.5 seconds", (2.0, 7.5)),
        ("It starts at 1.5 and ends at 6.", (1.5, 6.0)),
        ("It starts at 1.5. It ends at 6.", (1.5, 6.0)),
        ("00:00:03 to 00:00:08", (3.0, 8.0)),
        ("3.0 – 9.5", (3.0, 9.5)),
        ("2..5", None),
        ("no idea", None),
        ("at 4 seconds", None),
        ("", None),
    ],
)
def test_parse_interval(text, interval):
    assert parse_interval(text) == interval


def test_iou():
    assert iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert iou((0, 1), (2, 3)) == 0.0
    assert iou((2, 4), (2, 4)) == 1.0
    assert iou((2, 2), (2, 2)) == 0.0


def test_summarize():
    recs = [
        {"task": "mc_color", "answer_letter": "A", "options": ["a", "b"], "prediction": "(A) a"},
        {"task": "mc_color", "answer_letter": "B", "options": ["a", "b"], "prediction": "(A) a"},
        {"task": "mc_order", "answer_letter": "C", "prediction": "C"},
        {"task": "niah", "answer_letter": "A", "haystack_seconds": 64.0, "depth": 0.0, "prediction": "A"},
        {"task": "niah", "answer_letter": "A", "haystack_seconds": 64.0, "depth": 0.25, "prediction": "B"},
        {"task": "niah", "answer_letter": "A", "haystack_seconds": 128.0, "depth": 0.25, "prediction": "(A)"},
        {"task": "grounding", "timestamp": [0, 10], "prediction": "0 - 10"},
        {"task": "grounding", "timestamp": [0, 10], "prediction": "5 - 15"},
        {"task": "grounding", "timestamp": [0, 10], "prediction": "nothing"},
    ]
    s = summarize(recs)
    assert s["per_task"]["mc_color"] == 0.5 and s["per_task"]["mc_order"] == 1.0
    assert s["mc_accuracy"] == pytest.approx(2 / 3)
    assert s["niah"] == {"64": {"0": 1.0, "0.25": 0.0}, "128": {"0.25": 1.0}}
    assert s["niah_accuracy"] == pytest.approx(2 / 3)
    assert s["grounding_r@0.5"] == pytest.approx(1 / 3) and s["grounding_r@0.3"] == pytest.approx(2 / 3)
    assert s["grounding_miou"] == pytest.approx((1 + 1 / 3) / 3)
    assert s["counts"] == {"grounding": 3, "mc_color": 2, "mc_order": 1, "niah": 3}
    assert summarize([])["mc_accuracy"] is None


def test_caption_check_counts_captions_that_end_and_their_totals(tmp_path):
    """`evaluate_captions`: one caption per video a count question asks about; it "ends" when it reaches the
    training captions' closing sentence, and is right when that N is the count question's answer."""
    import json

    from videochat_flash.data.scoring import caption_total
    from videochat_flash.data.synth import evaluate_captions

    assert caption_total("First, a red circle appears. In total 3 shapes appear.") == 3
    assert caption_total("In total 1 shape appears.") == 1
    assert caption_total("Then, a small yellow circle appears and moves up. Then,") is None
    rows = [
        {"video": "a.mp4", "task": "mc_count", "options": ["1", "2", "3"], "answer_index": 1},
        {"video": "a.mp4", "task": "mc_count", "options": ["1", "2", "3"], "answer_index": 1},
        {"video": "b.mp4", "task": "mc_count", "options": ["1", "2", "3"], "answer_index": 2},
        {"video": "c.mp4", "task": "mc_color", "options": ["red"], "answer_index": 0},
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    captions = {"a.mp4": "In total 2 shapes appear.", "b.mp4": "Then, a circle. Then, a circle. Then,"}
    seen = []

    def caption(path):
        seen.append(path)
        return captions[path.rsplit("/", 1)[-1]]

    assert evaluate_captions(tmp_path, caption) == {"videos": 2, "ended": 1, "right_count": 1}
    assert len(seen) == 2 and all(p.startswith("/") for p in seen)  # each video once, by absolute path
    assert evaluate_captions(tmp_path, caption, limit=1)["videos"] == 1
