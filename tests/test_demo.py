"""The demo model: the one-command pipeline end to end (tiny scale), and the committed model."""

import json
import shutil
from pathlib import Path

import pytest

from videochat_flash import VideoChatFlash
from videochat_flash.data.synth import ANNOTATIONS_VERSION
from videochat_flash.inference.cache import TokenCache
from videochat_flash.train.demo import (
    DATA,
    STAGE_STAMP,
    STAGES,
    build_demo,
    data_mismatches,
    finished_stage,
    missing_annotations,
    read_step_records,
    record_seconds,
    recorded_seconds,
    write_model_card,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "videochat-flash-demo"


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("demo")
    out = build_demo(tmp_path / "model", tmp_path / "work", seed=3, scale=0.004, evaluate=False)
    return out, tmp_path / "work"


def test_tiny_end_to_end_pipeline(tiny_build):
    """Generate a few samples, train a few steps of every stage, save, load, answer."""
    out, work = tiny_build
    report = json.loads((out / "training_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [
        "stage0_vision",
        "stage0_codes",
        "stage0_scratch",
        "stage0_mc",
        "stage0_dir",
        "stage0_niah",
        "stage1_connector",
        "stage2_short",
        "stage3_short_long",
        "stage4_highres",
    ]
    assert all(s["steps"] >= 1 for s in report["stages"])
    # the cacheable steps record their time
    times = recorded_seconds(work)
    assert set(times) == {"data", "vision", "codes", *STAGES}
    # the wall time holds every recorded step; each of them and the wall time are rounded to 0.1 s when written
    rounding = 0.05 * (len(times) + 1)
    assert report["reused_seconds"] == {} and report["train_seconds"] >= sum(times.values()) - rounding
    assert (out / "README.md").is_file() and (out / "example.mp4").is_file()
    model = VideoChatFlash.from_pretrained(out)
    assert model.config.image_size == 96  # stage 4 raised the resolution
    answer, history = model.chat(
        str(out / "example.mp4"), "What color is the circle?", generation={"max_new_tokens": 6}
    )
    assert isinstance(answer, str) and len(history) == 2


def test_a_rebuild_reuses_finished_stages_up_to_the_first_missing_one(tiny_build, capsys):
    """An interrupted build picks up where it stopped: finished stages are reused, the first unfinished one and all
    after it train again from a clean folder (the log appends, so a stale one would double its steps)."""
    out, work = tiny_build
    before = {stage: (work / stage / "final" / "model.safetensors").stat().st_mtime_ns for stage in STAGES}
    shutil.rmtree(work / "stage2_short" / "final")  # as if the build died during stage 2
    build_demo(out, work, seed=3, scale=0.004, evaluate=False)
    kept = ["stage0_scratch", "stage0_mc", "stage0_dir", "stage0_niah", "stage1_connector"]
    after = {stage: (work / stage / "final" / "model.safetensors").stat().st_mtime_ns for stage in STAGES}
    assert [s for s in STAGES if after[s] == before[s]] == kept
    assert "stage0_niah: finished by an earlier run of this command" in capsys.readouterr().out
    report = json.loads((out / "training_report.json").read_text())
    assert set(report["reused_seconds"]) == {"data", "vision", "codes", *kept}
    steps = [r["step"] for r in read_step_records(work / "stage2_short" / "train_log.jsonl")]
    assert steps == sorted(set(steps))


def test_a_stage_stamp_changes_with_its_data_mixture(tmp_path):
    """A cached stage is not reused once the mixture it read has changed (the builder rewrites mixtures in place)."""
    from videochat_flash.train.demo import stage_stamp

    mixture = tmp_path / "stage3.yaml"
    mixture.write_text("datasets:\n- json_path: annotations/short_caption.jsonl\n")
    overrides = [f"data.path={mixture}", "train.seed=6"]
    before = stage_stamp("stage3_short_long", overrides)
    assert before == stage_stamp("stage3_short_long", overrides)
    mixture.write_text(mixture.read_text() + "- json_path: annotations/long_mc_multi.jsonl\n")
    assert stage_stamp("stage3_short_long", overrides) != before


def test_cached_vision_weights_of_another_config_are_trained_again(tiny_build):
    from videochat_flash.train.demo import make_vision_weights

    _, work = tiny_build
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is True
    metrics = work / "stage0_vision" / "umt.json"
    written = json.loads(metrics.read_text())
    written["config"]["lr"] *= 2  # as if the recipe had changed since
    metrics.write_text(json.dumps(written))
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is False
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is True  # the retrained weights match again
    written = json.loads(metrics.read_text())
    written["style"]["background"] = "mid"  # trained on scenes that looked different
    metrics.write_text(json.dumps(written))
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is False


def test_cached_vision_weights_from_before_a_config_field_existed_are_reused(tiny_build):
    """A tower trained before a config field was added did what the field's default does: it stays valid, unless
    the recipe sets the field to something else."""
    from videochat_flash.train.demo import make_vision_weights

    _, work = tiny_build
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is True
    metrics = work / "stage0_vision" / "umt.json"
    written = json.loads(metrics.read_text())
    assert written["config"]["motion_mix"] == 0.0
    del written["config"]["motion_mix"]
    metrics.write_text(json.dumps(written))
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is True
    written["config"]["motion_mix"] = 0.25  # trained with another value than the recipe's
    metrics.write_text(json.dumps(written))
    assert make_vision_weights(work, seed=3, scale=0.004)[1] is False


def test_connector_codes_are_made_again_for_another_tower_or_config(tiny_build):
    """The distilled connector is reused only over the very tower weights and config it was made with."""
    from videochat_flash.train.demo import make_connector_weights, make_vision_weights

    _, work = tiny_build
    tower = make_vision_weights(work, seed=3, scale=0.004)[0]
    assert make_connector_weights(work, seed=3, scale=0.004, vision_weights=tower)[1] is True
    assert make_connector_weights(work, seed=4, scale=0.004, vision_weights=tower)[1] is False  # another seed
    assert make_connector_weights(work, seed=4, scale=0.004, vision_weights=tower)[1] is True
    other = work / "other_umt.pt"
    other.write_bytes(tower.read_bytes() + b"\0")  # same config, different bytes: another tower
    assert make_connector_weights(work, seed=4, scale=0.004, vision_weights=other)[1] is False


def test_a_finished_stage_is_reused_only_with_the_same_recipe(tmp_path):
    assert finished_stage(tmp_path, "stage2_short") is None
    final = tmp_path / "stage2_short" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    stamp = {"recipe": "a: 1\n", "overrides": ["train.seed=3"]}
    assert finished_stage(tmp_path, "stage2_short", stamp) == final  # written before stamps existed
    (tmp_path / "stage2_short" / STAGE_STAMP).write_text(json.dumps(stamp))
    assert finished_stage(tmp_path, "stage2_short", stamp) == final
    assert finished_stage(tmp_path, "stage2_short", {**stamp, "overrides": ["train.seed=4"]}) is None


def test_cached_data_of_another_seed_or_size_is_not_reused():
    sizes = {**DATA, "num_samples": 8, "num_long": 2, "num_niah": 2, "num_single": 8}
    manifest = {
        "seed": 3,
        "size": 64,
        "fps": 1.0,
        "short_seconds": [4, 16],
        "long_seconds": [16, 48],
        "videos": {"single": 8, "short": 8, "long": 2, "niah": 2},
        "style": {"background": "dark", "speed": [0.08, 0.12]},  # data.shapes.STYLE
        "annotations_version": ANNOTATIONS_VERSION,
    }
    assert data_mismatches(manifest, 3, sizes) == []
    reworded = {**manifest, "annotations_version": ANNOTATIONS_VERSION + 1}  # answers worded differently
    assert data_mismatches(reworded, 3, sizes) == [
        f"annotations_version {ANNOTATIONS_VERSION + 1} != {ANNOTATIONS_VERSION}"
    ]
    unversioned = {k: v for k, v in manifest.items() if k != "annotations_version"}  # written before the field
    first_wording = {**unversioned, "annotations_version": 1}
    assert data_mismatches(unversioned, 3, sizes) == data_mismatches(first_wording, 3, sizes)
    other_look = {**manifest, "style": {"background": "mid", "speed": None}}  # the look of builds up to session 18
    assert data_mismatches(other_look, 3, sizes) == [
        "style {'background': 'mid', 'speed': None} != {'background': 'dark', 'speed': [0.08, 0.12]}"
    ]
    assert data_mismatches(manifest, 4, sizes) == ["seed 3 != 4"]
    assert data_mismatches(manifest, 3, {**sizes, "num_long": 3}) == [
        "videos {'single': 8, 'short': 8, 'long': 2, 'niah': 2} != {'single': 8, 'short': 8, 'long': 3, 'niah': 2}"
    ]


def test_data_from_before_a_stage_file_existed_is_not_reused():
    """A cached dataset lacking a file the stages now read (here the multi-turn records) is regenerated, not silently
    trained without it."""
    from videochat_flash.data.synth import STAGES

    files = {f"annotations/{pool}_{task}.jsonl": 1 for stage in STAGES.values() for pool, task in stage}
    assert missing_annotations({"annotations": files}) == []
    del files["annotations/short_mc_multi.jsonl"]
    assert missing_annotations({"annotations": files}) == ["annotations/short_mc_multi.jsonl"]


def test_reused_build_steps_keep_their_recorded_time(tmp_path):
    """A rebuild that reuses cached data/vision reports their original seconds (vision falls back to umt.json)."""
    (tmp_path / "stage0_vision").mkdir()
    (tmp_path / "stage0_vision" / "umt.json").write_text(json.dumps({"seconds": 1686.0}))
    record_seconds(tmp_path, "data", 70.04)
    assert recorded_seconds(tmp_path) == {"data": 70.0, "vision": 1686.0}
    report = {"seed": 0, "train_seconds": 3600.0, "stages": [], "reused_seconds": {"vision": 1686.0}}
    write_model_card(tmp_path, report)
    assert (
        "reused from an earlier run of the same command in the same work dir (vision 28.1 min)"
        in (tmp_path / "README.md").read_text()
    )


def test_model_card_reports_whether_captions_end(tmp_path):
    """The multiple-choice table does not show whether free-form captions end; the card states it."""
    full = {"mc_accuracy": 0.5, "per_task": {}, "niah": {}}
    report = {
        "seed": 0,
        "train_seconds": 60.0,
        "stages": [],
        "eval": {"full": full, "compressed": full, "captions": {"videos": 12, "ended": 3, "right_count": 2}},
    }
    write_model_card(tmp_path, report)
    card = (tmp_path / "README.md").read_text()
    assert 'Captions ("Describe the video.", 12 held-out videos' in card
    assert '3 end with "In total N shapes appear.", 2 of them with the right N.' in card


def test_committed_demo_model_answers_held_out_questions(tmp_path):
    """The bundled model loads offline and answers held-out questions in the trained format; on videos it never
    saw it names the colour, the shape and the direction of a lone shape, and the colour of the shape asked about
    (or the shape of the colour asked about) in scenes of 1-5 shapes.

    Its full accuracy table is in its model card; the issue's >= 90% multiple-choice bar over all question types
    (count, order and direction included) is NOT met yet (see the card), so this test pins what the model does
    reliably.
    """
    from videochat_flash.data.scoring import extract_letter, score_mc
    from videochat_flash.data.synth import load_records

    assert DEMO.is_dir(), "the bundled demo model is missing"
    card = (DEMO / "README.md").read_text()
    assert "## Evaluation" in card and "mc_accuracy" in card
    eval_dir = _held_out_eval_set(tmp_path / "eval", 12, niah_multipliers=(), num_single=20)
    pinned = {"single_mc_color": [], "single_mc_shape": [], "single_mc_direction": [], "mc_color": [], "mc_shape": []}
    records = [r for r in load_records(eval_dir / "eval.jsonl") if r.get("answer_letter") and r["task"] in pinned]
    valid = 0
    for record, answer in zip(records, _answer_all(records, eval_dir, tmp_path / "cache"), strict=True):
        letter = extract_letter(answer, record.get("options"))
        valid += letter is not None and "ABCDE".index(letter) < len(record["options"])
        pinned[record["task"]].append(score_mc(answer, record["answer_letter"], record["options"]))
    assert valid / len(records) >= 0.9
    # measured on this seed: lone colour 20/20, shape 18/20; chance is 4/20 (P(>= 15 correct by guessing) < 1e-6).
    # The model before the multiple-choice phase named a lone shape's colour at chance (4/20 here).
    for task in ("single_mc_color", "single_mc_shape"):
        assert len(pinned[task]) == 20 and sum(pinned[task]) >= 15, (task, sum(pinned[task]))
    # a lone shape's direction: measured 14/20 on this seed, chance 5/20 (P(>= 11 by guessing) < 0.4%). The model
    # before the direction phase (stage0_dir) and the motion style (data.shapes.STYLE) scored 15% on the card's seed
    direction = pinned["single_mc_direction"]
    assert len(direction) == 20 and sum(direction) >= 11, sum(direction)
    # the asked object among 1-5 shapes: measured on this seed 10/12 colour, 10/12 shape (chance 1/5). The model
    # before the connector was distilled onto attribute codes (stage0_codes) scored 8/12 colour here, 68% on the
    # card's seed; the build before subjects were drawn from the whole vocabulary scored ~40%
    scene = pinned["mc_color"] + pinned["mc_shape"]
    assert len(scene) == 24 and sum(scene) >= 18, (sum(pinned["mc_color"]), sum(pinned["mc_shape"]))
    assert sum(pinned["mc_color"]) >= 8, pinned["mc_color"]


def _held_out_eval_set(eval_dir: Path, num_samples: int, **kwargs) -> Path:
    """An evaluation set on held-out seed 4242, rendered like the demo's training data."""
    from videochat_flash.data.synth import make_eval_set

    make_eval_set(
        eval_dir,
        4242,
        num_samples,
        size=DATA["size"],
        fps=DATA["fps"],
        short_seconds=DATA["short_seconds"],
        long_seconds=DATA["long_seconds"],
        train_max_seconds=max(DATA["long_seconds"]),
        **kwargs,
    )
    return eval_dir


def _answer_all(records: list[dict], eval_dir: Path, cache_dir: Path) -> list[str]:
    """The committed demo model's greedy answer to each evaluation record."""
    model = VideoChatFlash.from_pretrained(DEMO)
    cache = TokenCache(cache_dir)
    answers = []
    for record in records:
        video = str((eval_dir / record["video"]).resolve())
        generation = {"max_new_tokens": 12, "do_sample": False}
        answers.append(model.chat(video, record["prompt"], generation=generation, cache=cache)[0])
    return answers


def test_committed_demo_model_finds_the_needle(tmp_path):
    """Needle in a haystack on held-out videos: a 4 s needle (a large shape on a grey screen) at five depths of
    haystacks 1x and 2x the longest training video (48 s, 96 s); the model names its shape or colour."""
    from videochat_flash.data.scoring import score_mc
    from videochat_flash.data.synth import load_records

    eval_dir = _held_out_eval_set(tmp_path / "eval", 0, niah_multipliers=(1, 2))
    records = [r for r in load_records(eval_dir / "eval.jsonl") if r["task"] == "niah"]
    assert len(records) == 10
    correct: dict[float, int] = {}
    for record, answer in zip(records, _answer_all(records, eval_dir, tmp_path / "cache"), strict=True):
        hit = score_mc(answer, record["answer_letter"], record["options"])
        correct[record["haystack_seconds"]] = correct.get(record["haystack_seconds"], 0) + hit
    # measured on this seed: 5/5 at 48 s, 5/5 at 96 s (also the model before: 5/5, 5/5); chance is 1/4-1/5
    # per question (P(>= 4 of 5 by guessing) < 2%); the model installed before the needle phase (stage0_niah) found
    # 6 of 22 needles at these two lengths (seed 2000, 11 depths)
    assert set(correct) == {48.0, 96.0} and min(correct.values()) >= 4, correct
