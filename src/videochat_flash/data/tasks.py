"""Questions, answers and annotation records for synthetic scenes (pure functions, no I/O).

Prompt formats follow the benchmarks the real model is evaluated on (REFERENCE §11):
* multiple choice — the MVBench pieces (REFERENCE §11.1) with the question moved to the end:
  ``"Option:\\n(A) x\\n(B) y\\nQuestion: q"``. The options are the question type's whole answer vocabulary in a
  fixed order (all colours, all shapes, the four directions, counts 1–5), so a letter always names the same
  answer. Why fixed: with shuffled options the answer letter must be found by matching the answer to an option's
  text, and the demo's from-scratch 4-layer LLM did not learn that within the hour of CPU it trains for (its
  letter loss stayed at chance, ln 4, after 6,400 text-only "which option says X" samples). Answers are
  ``"Answer: y (B)."`` (the value first: see `mc_answer`), except for the questions about one object named by its
  other attribute (`PER_OBJECT_TASKS`), answered ``"The triangle yellow (D)."`` / ``"The red square (B)."``: the
  subject first, copied from the question, then the asked attribute *right after it*, then the letter; the
  questions end with their subject ("What color is the triangle?", "Which shape is red?"). Why: the LLM must carry the subject from the question
  to where it answers and then look it up among the visual tokens. In a simulation of the demo's LLM on ideal
  visual tokens (`benchmarks/probe_routing.py`) the lookup keyed by the token it is on was exact after 600 steps,
  where the letter asked in one step was right 34–62% of the time; copying the subject is the slower half, and
  the question placed last helped it (66–83% against 52–55%). Training scenes are also asked about subjects drawn
  from the whole vocabulary, present or not (`subject_records`, `absent_record`), so that the subject cannot be
  read off the video;
* temporal grounding — the Charades-STA pre/post prompt (typo "seonds" kept), answered
  ``"The event happens in the S - E seconds."``;
* captions — ``"Describe the video."`` (stage 1 uses the `plain` template, which keeps only the caption).

Every record is a LLaVA-NeXT annotation (REFERENCE §9.2) plus machine-readable ground truth:
``task``, ``prompt`` (human text without the placeholder), ``answer`` (gpt text), and per task
``options``/``answer_letter``/``answer_index`` (MC), ``timestamp`` (grounding), ``depth``/
``haystack_seconds``/``needle`` (NIAH), and ``meta`` (scene: fps, size, frames, per-object trajectories).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .shapes import COLORS, DIRECTIONS, NEEDLE_COLORS, SHAPES, Scene, SceneObject

IMAGE = "<image>"
LETTERS = "ABCDE"
COUNTS: tuple[str, ...] = ("1", "2", "3", "4", "5")

CAPTION_PROMPT = "Describe the video."
ANSWER_PREFIX = "Answer:"  # so the value is the options' own token (" green"), not an answer-initial one
GROUNDING_PRE = (
    "Please find the visual event described by a sentence in the video, determining its starting and ending "
    "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
    "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: "
)
GROUNDING_POST = "Please return its start time and end time."

MC_TASKS = ("mc_color", "mc_shape", "mc_count", "mc_order", "mc_direction")
NIAH_TASKS = ("niah",)
ALL_TASKS = ("caption", *MC_TASKS, "grounding", *NIAH_TASKS)

_MOTION = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down"}
_ORDINAL_START = ("First", "Then", "Then", "Then", "Then", "Then")


# ------------------------------------------------------------------------------------------- formats


def mc_prompt(question: str, options: list[str]) -> str:
    """The options, then the question last, so its subject sits a few tokens before the answer."""
    lines = "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))
    return "Option:\n" + lines + "Question: " + question


def mc_answer(options: list[str], index: int, subject: str | None = None) -> str:
    """``"Answer: y (B)."``: the value, then its letter; with the asked object's ``subject`` ("triangle", "red"),
    the value follows the subject: ``"The triangle yellow (D)."``, or ``"The red square (B)."`` for a colour.

    Why the value before the letter: in `benchmarks/probe_routing.py` the letter asked in one step was right
    34-62% of the time, the letter after its value 100%; the value is what the video decides."""
    letter = LETTERS[index]
    if subject is None:
        return f"{ANSWER_PREFIX} {options[index]} ({letter})."
    return f"The {subject} {options[index]} ({letter})."


def grounding_prompt(sentence: str) -> str:
    """Charades-STA context (REFERENCE §11.7): pre_prompt + sentence + ". " + post_prompt."""
    return GROUNDING_PRE + sentence + ". " + GROUNDING_POST


def format_seconds(t: float) -> str:
    return f"{t:.1f}"


def grounding_answer(start: float, end: float) -> str:
    return f"The event happens in the {format_seconds(start)} - {format_seconds(end)} seconds."


def make_record(rid: str, video: str, prompt: str, answer: str, task: str, **extra) -> dict:
    rec = {
        "id": rid,
        "video": video,
        "conversations": [
            {"from": "human", "value": IMAGE + "\n" + prompt},
            {"from": "gpt", "value": answer},
        ],
        "task": task,
        "prompt": prompt,
        "answer": answer,
    }
    rec.update(extra)
    return rec


# ------------------------------------------------------------------------------------------- helpers


def _fixed_options(answer: str, vocabulary: Sequence[str]) -> tuple[list[str], int]:
    """Options = the whole ``vocabulary`` in its fixed order; returns (options, index of ``answer``)."""
    options = list(vocabulary)
    return options, options.index(answer)


def describe(o: SceneObject, with_size: bool = False) -> str:
    return f"{o.size} {o.color} {o.shape}" if with_size else f"{o.color} {o.shape}"


def event_sentence(o: SceneObject) -> str:
    return f"a {o.color} {o.shape} {_MOTION[o.direction]}"


def caption(scene: Scene) -> str:
    """Objects in order of appearance: "First, a big red circle appears and moves left. Then, ..."."""
    if not scene.objects:
        return "Nothing moves; the background stays empty."
    parts = []
    for k, o in enumerate(scene.objects):
        gone = ", then disappears" if o.end < scene.duration else ""
        parts.append(
            f"{_ORDINAL_START[min(k, 5)]}, a {describe(o, True)} appears and {_MOTION[o.direction]}{gone}."
        )
    n = len(scene.objects)
    parts.append(f"In total {n} shape{'s' if n != 1 else ''} appear{'' if n != 1 else 's'}.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------- MC questions

# Tasks that ask about one object of the scene, named by its other attribute ("What color is the triangle?"):
# training videos get one such question per object (`synth`), so that one video's questions have different
# answers. With one question per video a from-scratch LLM could answer from the video alone and never read the
# question: after 2,400 steps the demo scored 60% on its training scenes' colours and ~40% on new ones.
PER_OBJECT_TASKS = ("mc_color", "mc_shape")
# Task name of a record holding all of a video's multiple-choice questions as one multi-turn conversation.
MULTI_TURN_TASK = "mc_multi"


def per_object_question(task: str, subject: str) -> str:
    """The `PER_OBJECT_TASKS` question, ending with its subject: a shape for mc_color, a colour for mc_shape."""
    return f"What color is the {subject}?" if task == "mc_color" else f"Which shape is {subject}?"


def _asked_object(rng: np.random.Generator, objs: list, target: int | None):
    """The object a per-object question asks about: ``objs[target]``, or one drawn from ``rng`` if None."""
    return objs[int(rng.integers(0, len(objs)))] if target is None else objs[target]


def mc_question(
    rng: np.random.Generator, scene: Scene, task: str, target: int | None = None
) -> tuple[str, list[str], int, dict] | None:
    """(question, options, answer_index, extra ground truth) for an MC task, or None if not applicable.

    ``target``: the object asked about by the per-object tasks (`PER_OBJECT_TASKS`); drawn from ``rng`` if None
    (only then is ``rng`` used for it). Assumes every object has a distinct colour and a distinct shape.
    """
    if target is not None and task not in PER_OBJECT_TASKS:
        raise ValueError(f"target is only for {PER_OBJECT_TASKS}, not {task!r}")
    objs = scene.objects
    if not objs:
        return None
    if task == "mc_color":
        o = _asked_object(rng, objs, target)
        options, idx = _fixed_options(o.color, COLORS)
        return per_object_question(task, o.shape), options, idx, {"target": objs.index(o), "subject": o.shape}
    if task == "mc_shape":
        o = _asked_object(rng, objs, target)
        options, idx = _fixed_options(o.shape, SHAPES)
        return per_object_question(task, o.color), options, idx, {"target": objs.index(o), "subject": o.color}
    if task == "mc_direction":
        o = objs[int(rng.integers(0, len(objs)))]
        options, idx = _fixed_options(o.direction, DIRECTIONS)
        return f"In which direction does the {o.name} move?", options, idx, {"target": objs.index(o)}
    if task == "mc_count":
        if str(len(objs)) not in COUNTS:
            return None
        options, idx = _fixed_options(str(len(objs)), COUNTS)
        return "How many shapes appear in the video?", options, idx, {}
    if task == "mc_order":
        starts = sorted({o.start for o in objs})
        if len(objs) < 2 or len(starts) != len(objs):
            return None
        last = bool(rng.random() < 0.3)
        o = objs[-1] if last else objs[0]
        options, idx = _fixed_options(o.color, COLORS)
        q = f"What color is the shape that appeared {'last' if last else 'first'}?"
        return q, options, idx, {"target": objs.index(o)}
    raise ValueError(f"unknown MC task {task!r}")


def mc_record(
    rng: np.random.Generator, scene: Scene, task: str, rid: str, video: str, target: int | None = None, **extra
) -> dict | None:
    q = mc_question(rng, scene, task, target)
    if q is None:
        return None
    question, options, idx, gt = q
    return make_record(
        rid,
        video,
        mc_prompt(question, options),
        mc_answer(options, idx, gt.get("subject")),
        task,
        question=question,
        options=options,
        answer_index=idx,
        answer_letter=LETTERS[idx],
        **gt,
        **extra,
    )


def _subject_field(task: str) -> tuple[str, tuple[str, ...]]:
    """The object attribute that names a `PER_OBJECT_TASKS` question's subject, and that attribute's vocabulary."""
    if task not in PER_OBJECT_TASKS:
        raise ValueError(f"subject questions are for {PER_OBJECT_TASKS}, not {task!r}")
    return ("shape", SHAPES) if task == "mc_color" else ("color", COLORS)


def absent_record(scene: Scene, task: str, subject: str, rid: str, video: str, **extra) -> dict:
    """A per-object question about a ``subject`` the scene does NOT hold, answered ``"The star is not in the video."``
    (``"The blue shape ..."`` for a colour). Training only: such a question can only be answered by reading its
    subject from the question, never from the video."""
    field, _ = _subject_field(task)
    if subject in {getattr(o, field) for o in scene.objects}:
        raise ValueError(f"{subject!r} is in the scene")
    options = list(COLORS if task == "mc_color" else SHAPES)
    answer = f"The {subject}{'' if task == 'mc_color' else ' shape'} is not in the video."
    question = per_object_question(task, subject)
    prompt = mc_prompt(question, options)
    return make_record(
        rid, video, prompt, answer, task, question=question, options=options, subject=subject, absent=True, **extra
    )


def subject_records(
    rng: np.random.Generator, scene: Scene, task: str, rid: str, video: str, count: int, exclude: str, **extra
) -> list[dict]:
    """``count`` more `PER_OBJECT_TASKS` questions about one scene, their subjects drawn without replacement from
    the task's whole subject vocabulary but ``exclude`` (the subject already asked): each is answered with the
    object's attribute when the scene shows it (`mc_record`), else as not in the video (`absent_record`).

    Why the whole vocabulary: with subjects drawn from the objects in view (each object asked once), the subject of
    a question could be guessed from the video and the earlier turns, and the demo's LLM learned to name an object it
    saw instead of the one asked about (it copied the asked subject 35-52% of the time). Drawn this way the video
    says little about which subject is asked; in `benchmarks/probe_routing.py` the copy went from ~58% to ~80%
    (3 seeds), and in the demo build from 35% to 100% (held-out colour questions)."""
    field, vocabulary = _subject_field(task)
    pool = [v for v in vocabulary if v != exclude]
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    where = {getattr(o, field): k for k, o in enumerate(scene.objects)}
    records = []
    for j, i in enumerate(picks):
        subject, sub_rid = pool[int(i)], f"{rid}_s{j}"
        if subject in where:
            records.append(mc_record(rng, scene, task, sub_rid, video, target=where[subject], **extra))
        else:
            records.append(absent_record(scene, task, subject, sub_rid, video, **extra))
    return records


def multi_turn_record(records: Sequence[dict], rid: str, **extra) -> dict:
    """One conversation asking every question of ``records`` (all about the same video) in the given order.

    The video placeholder stays in the first human turn only, as in LLaVA-style multi-turn data. Training on one
    such record costs the video's visual tokens once for all its questions instead of once per question.
    """
    if not records or len({r["video"] for r in records}) != 1:
        raise ValueError("a multi-turn record needs at least one record, all about the same video")
    turns = []
    for k, r in enumerate(records):
        prompt = (IMAGE + "\n" if k == 0 else "") + r["prompt"]
        turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": r["answer"]}]
    return {
        "id": rid,
        "video": records[0]["video"],
        "conversations": turns,
        "task": MULTI_TURN_TASK,
        "questions": [r["id"] for r in records],
        **extra,
    }


def caption_record(scene: Scene, rid: str, video: str, **extra) -> dict:
    return make_record(rid, video, CAPTION_PROMPT, caption(scene), "caption", **extra)


def grounding_record(rng: np.random.Generator, scene: Scene, rid: str, video: str, **extra) -> dict | None:
    if not scene.objects:
        return None
    k = int(rng.integers(0, len(scene.objects)))
    o = scene.objects[k]
    sentence = event_sentence(o)
    return make_record(
        rid,
        video,
        grounding_prompt(sentence),
        grounding_answer(o.start, o.end),
        "grounding",
        sentence=sentence,
        timestamp=[o.start, o.end],
        target=k,
        **extra,
    )


# ----------------------------------------------------------------------------------------------- NIAH


def needle_question(rng: np.random.Generator, shape: str, color: str, kind: str | None = None):
    """MC question about the needle (a huge shape on a light-grey screen). Returns (question, options, idx)."""
    kind = kind or ("shape" if rng.random() < 0.5 else "color")
    if kind == "shape":
        options, idx = _fixed_options(shape, SHAPES)
        q = "A large shape was briefly shown on a light gray screen. What shape was it?"
    elif kind == "color":
        options, idx = _fixed_options(color, NEEDLE_COLORS)
        q = "A large shape was briefly shown on a light gray screen. What color was it?"
    else:
        raise ValueError(f"unknown needle question kind {kind!r}")
    return q, options, idx, kind


def niah_record(
    rng: np.random.Generator,
    *,
    rid: str,
    video: str,
    shape: str,
    color: str,
    depth: float,
    haystack_seconds: float,
    needle_start: float,
    needle_end: float,
    needle_frames: list[int],
    kind: str | None = None,
    **extra,
) -> dict:
    question, options, idx, kind = needle_question(rng, shape, color, kind)
    return make_record(
        rid,
        video,
        mc_prompt(question, options),
        mc_answer(options, idx),
        "niah",
        question=question,
        options=options,
        answer_index=idx,
        answer_letter=LETTERS[idx],
        depth=depth,
        haystack_seconds=haystack_seconds,
        needle={
            "shape": shape,
            "color": color,
            "question": kind,
            "start": needle_start,
            "end": needle_end,
            "frames": needle_frames,
        },
        **extra,
    )
