"""MVBench, MLVU (multiple choice) and LVBench: prompts of REFERENCE §11.1/11.4/11.5, scored with `mcq_acc`.

`mcq_acc` normalises prediction and ground-truth letter the same way and compares them:
* a text like ``"B. something"`` (``^([A-E])\\.\\s*(.+)$``, case-insensitive, no DOTALL) gives its letter, upper-cased;
* otherwise newlines/tabs become spaces, the text is stripped, VQA-style punctuation cleanup runs (see
  `vqa_punctuation`), single quotes, double quotes, ``)`` and ``(`` are stripped from the ends (in that order),
  the text is stripped and lower-cased; then the first standalone letter A-E (``\\b[A-E]\\b``, case-insensitive)
  is the answer, upper-cased; failing that the processed text itself is compared.

Quirks this reproduces (§11.8): lowercase ``b`` counts as B, ``"A and B"`` gives A, any sentence containing the
article "a" gives A, an option text such as ``e`` becomes E; the ground truth is the *first* candidate equal to the
answer; when the answer is not among the candidates every prediction scores 0; empty predictions leave a task's
denominator while group weights use full sample counts.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    Benchmark,
    BenchmarkError,
    BenchmarkItem,
    letter,
    read_json_list,
    relpath,
    resolve_video,
)

_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_LETTER_DOT = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_STANDALONE = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def vqa_punctuation(text: str) -> str:
    """VQA-style cleanup: each listed character is deleted when it touches a space anywhere in `text` (or when
    `text` contains digit-comma-digit), otherwise replaced by a space; then periods not followed by a digit go."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def mcq_normalise(text: str) -> str:
    """The `mcq_acc` normalisation of one string (prediction or ground-truth letter)."""
    m = _LETTER_DOT.match(text)
    if m:
        return m.group(1).upper()
    t = text.replace("\n", " ").replace("\t", " ").strip()
    t = vqa_punctuation(t)
    t = t.strip("'").strip('"').strip(")").strip("(")
    t = t.strip().lower()
    m = _STANDALONE.search(t)
    if m:
        return m.group(1).upper()
    return t


def mcq_acc(gt_letter: str | None, prediction: str) -> float:
    if gt_letter is None:
        return 0.0
    return 1.0 if mcq_normalise(prediction) == mcq_normalise(gt_letter) else 0.0


def _gt_letter(candidates: list[str], answer: str) -> str | None:
    for i, c in enumerate(candidates):
        if c == answer:
            return letter(i)
    return None


class _McqBenchmark(Benchmark):
    skip_empty = True
    weighted_tasks = True

    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        if prediction is None:
            return 0.0
        return mcq_acc(item.answer, prediction.strip())


# --------------------------------------------------------------------------------------------------------
# MVBench
# --------------------------------------------------------------------------------------------------------
MVBENCH_TASKS = (
    "action_antonym",
    "action_count",
    "action_localization",
    "action_prediction",
    "action_sequence",
    "character_order",
    "counterfactual_inference",
    "egocentric_navigation",
    "episodic_reasoning",
    "fine_grained_action",
    "fine_grained_pose",
    "moving_attribute",
    "moving_count",
    "moving_direction",
    "object_existence",
    "object_interaction",
    "object_shuffle",
    "scene_transition",
    "state_change",
    "unexpected_action",
)

#: Video folder of each MVBench sub-task, relative to `videos` (the layout of the MVBench release's `video/`
#: folder). Override per task with `load_benchmark(..., video_dirs={...})`. `episodic_reasoning` entries are TVQA
#: frame folders read with the `img` reader; the reader takes 3 fps only when the path contains "tvqa".
MVBENCH_VIDEO_DIRS: dict[str, str] = {
    "action_antonym": "ssv2_video",
    "action_count": "perception/videos",
    "action_localization": "sta/sta_video",
    "action_prediction": "star/Charades_v1_480",
    "action_sequence": "star/Charades_v1_480",
    "character_order": "perception/videos",
    "counterfactual_inference": "clevrer/video_validation",
    "egocentric_navigation": "vlnqa",
    "episodic_reasoning": "tvqa/frames_fps3_hq",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "fine_grained_pose": "nturgbd",
    "moving_attribute": "clevrer/video_validation",
    "moving_count": "clevrer/video_validation",
    "moving_direction": "clevrer/video_validation",
    "object_existence": "clevrer/video_validation",
    "object_interaction": "star/Charades_v1_480",
    "object_shuffle": "perception/videos",
    "scene_transition": "scene_qa/video",
    "state_change": "perception/videos",
    "unexpected_action": "FunQA_test/test",
}

#: Sub-tasks whose "video" is a folder of frames read with the `img` reader.
MVBENCH_FRAME_TASKS = frozenset({"episodic_reasoning"})


def mvbench_prompt(question: str, candidates: list[str]) -> str:
    options = "".join(f"({letter(i)}) {c}\n" for i, c in enumerate(candidates))
    return "Question: " + question + "\nOption:\n" + options + "\nOnly give the best option."


class MVBench(_McqBenchmark):
    name = "mvbench"


def load_mvbench(annotations: Path, videos: Path | None, video_dirs: dict | None) -> MVBench:
    dirs = {**MVBENCH_VIDEO_DIRS, **(video_dirs or {})}
    items = []
    for task in MVBENCH_TASKS:
        path = annotations / "MVBench" / "json" / f"{task}.json"
        source = relpath(path, annotations)
        for index, rec in enumerate(read_json_list(path)):
            candidates = list(rec["candidates"])
            media = {"video_read_type": "img" if task in MVBENCH_FRAME_TASKS else "decord"}
            if "start" in rec:
                media["start"] = rec["start"]
                media["end"] = rec["end"]
            video = resolve_video(
                videos, [Path(dirs[task]) / rec["video"], Path(task) / rec["video"], rec["video"]]
            )
            items.append(
                BenchmarkItem(
                    benchmark="mvbench",
                    id=f"{source}#{index}",
                    source=source,
                    index=index,
                    task=task,
                    prompt=mvbench_prompt(rec["question"], candidates),
                    answer=_gt_letter(candidates, rec["answer"]),
                    video=video,
                    media=media,
                    max_new_tokens=16,
                    options=tuple(candidates),
                    record=rec,
                )
            )
    return MVBench(items, annotations=annotations, videos=videos)


# --------------------------------------------------------------------------------------------------------
# MLVU multiple choice
# --------------------------------------------------------------------------------------------------------
MLVU_FILES = (
    "1_plotQA",
    "2_needle",
    "3_ego",
    "4_count",
    "5_order",
    "6_anomaly_reco",
    "7_topic_reasoning",
)

#: Video folder of each MLVU sub-task relative to `videos` (MLVU release layout `video/<k>_<name>/`); when the
#: file is not there, `<videos>/<video>` is tried. Override with `video_dirs={"plotQA": ...}`.
MLVU_VIDEO_DIRS: dict[str, str] = {stem.split("_", 1)[1]: stem for stem in MLVU_FILES}


def mlvu_prompt(question: str, candidates: list[str]) -> str:
    options = "".join(f"({letter(i)}) {c}\n" for i, c in enumerate(candidates))
    return (
        "Question:"
        + question
        + "\nOption:\n"
        + options
        + "Answer with the option's letter from the given choices directly."
    )


class MLVU(_McqBenchmark):
    name = "mlvu"
    category_fields = ("question_type",)


def load_mlvu(annotations: Path, videos: Path | None, video_dirs: dict | None) -> MLVU:
    dirs = {**MLVU_VIDEO_DIRS, **(video_dirs or {})}
    items = []
    for stem in MLVU_FILES:
        task = stem.split("_", 1)[1]
        path = annotations / "MLVU_MC" / "json" / f"{stem}.json"
        source = relpath(path, annotations)
        for index, rec in enumerate(read_json_list(path)):
            candidates = list(rec["candidates"])
            items.append(
                BenchmarkItem(
                    benchmark="mlvu",
                    id=f"{source}#{index}",
                    source=source,
                    index=index,
                    task=task,
                    prompt=mlvu_prompt(rec["question"], candidates),
                    answer=_gt_letter(candidates, rec["answer"]),
                    video=resolve_video(videos, [Path(dirs[task]) / rec["video"], rec["video"]]),
                    media={"video_read_type": "decord"},
                    max_new_tokens=16,
                    options=tuple(candidates),
                    category={"question_type": rec.get("question_type", task)},
                    record=rec,
                )
            )
    return MLVU(items, annotations=annotations, videos=videos)


# --------------------------------------------------------------------------------------------------------
# LVBench
# --------------------------------------------------------------------------------------------------------
LVBENCH_TYPES = ("cartoon", "documentary", "live", "selfmedia", "sport", "tv")


def lvbench_prompt(question: str, candidates: list[str]) -> str:
    options = "".join(f"{letter(i)}. {c}\n" for i, c in enumerate(candidates))
    return question + "\n" + options + "Answer with the option's letter from the given choices directly."


class LVBench(_McqBenchmark):
    """Tasks are the six video types (`lvbench_<type>`), group `lvbench` = sample-weighted mean. The extra
    `question_type` table (a question counts once per listed type) is not reported by the original."""

    name = "lvbench"
    max_frames = 640
    category_fields = ("question_type",)


def load_lvbench(annotations: Path, videos: Path | None, video_dirs: dict | None) -> LVBench:
    path = annotations / "LVBench" / "json" / "lvbench_clean.json"
    source = relpath(path, annotations)
    items = []
    for index, rec in enumerate(read_json_list(path)):
        candidates = list(rec["candidates"])
        kind = rec["type"]
        sub = (video_dirs or {}).get(kind)
        cands = [Path(sub) / rec["video"]] if sub else []
        items.append(
            BenchmarkItem(
                benchmark="lvbench",
                id=f"{source}#{index}",
                source=source,
                index=index,
                task=kind,
                prompt=lvbench_prompt(rec["question"], candidates),
                answer=_gt_letter(candidates, rec["answer"]),
                video=resolve_video(videos, [*cands, rec["video"]]),
                media={"video_read_type": "img"},
                max_new_tokens=16,
                options=tuple(candidates),
                category={"question_type": list(rec.get("question_type") or [])},
                record=rec,
            )
        )
    bench = LVBench(items, annotations=annotations, videos=videos)
    bench.tasks = [t for t in LVBENCH_TYPES if t in bench.tasks] + [
        t for t in bench.tasks if t not in LVBENCH_TYPES
    ]
    return bench


def check_task_keys(video_dirs: dict | None, known: set[str], name: str) -> None:
    unknown = sorted(set(video_dirs or {}) - known)
    if unknown:
        raise BenchmarkError(f"video_dirs for {name} names unknown tasks: {', '.join(unknown)}")
