"""LongVideoBench validation (`longvideobench_val_v`), REFERENCE §11.3.

Prompt: subtitles interleaved as text (kept when some of the 512 reference frame times lies strictly inside the
subtitle span), starts with a space and ends with a newline.

Parsing is MMMU style: strip ``, . ! ? ; : '`` from the ends (one character class after the other), pad with
spaces; candidates are the letters found as "(X)", else as "X ", else as "X."; else, for responses of more than
5 words, the options whose text occurs (case-insensitive) in the response; several candidates: the one whose
marker occurs last ("(X)", " X ", or option text; in the "X." case no " X " exists, so the first in A-E order
wins); none: a random letter. The original draws from the global `random` state; here the draw is
`random.Random(<sha256 of the item id>)`, so a given item always gets the same fallback letter.
Scores are fractions (rounded to 5 decimals in the aggregate), not percents.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path

from .base import Benchmark, BenchmarkError, BenchmarkItem, letter, read_parquet_rows, relpath, resolve_video

PRE_PROMPT = ""
SUBTITLE_HEADER = " This video's subtitles are listed below: \n"
INSTRUCTION = (
    ".\n Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter of the correct option.\nQuestion: "
)
POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
SUBTITLE_FRAMES = 512


def _hms_to_seconds(text: str) -> float:
    h, m, s = text.split(":")
    return float(h) * 3600 + float(m) * 60 + float(s)


def frame_timestamps(duration: float) -> list[float]:
    if duration > SUBTITLE_FRAMES:
        return [duration / SUBTITLE_FRAMES * i for i in range(SUBTITLE_FRAMES)]
    return list(range(int(duration)))


def interleaved_subtitles(subtitles: list[dict], duration: float, start_offset: float) -> str:
    """Subtitle texts shown at some reference frame time, joined by newlines (§11.3)."""
    times = frame_timestamps(duration)
    kept = []
    for sub in subtitles:
        if "timestamp" in sub:
            start, end = sub["timestamp"]
            if not isinstance(end, float):
                end = duration
            text = sub["text"]
        else:
            start, end = _hms_to_seconds(sub["start"]), _hms_to_seconds(sub["end"])
            text = sub["line"]
        start -= start_offset
        end -= start_offset
        if end - start < 1:
            mid = (start + end) / 2
            start, end = mid - 0.5, mid + 0.5
        if any(start < t < end for t in times):
            kept.append(text)
    return "\n".join(kept)


def longvideobench_prompt(question: str, options: list[str], subtitle_text: str) -> str:
    block = question + "\n" + "\n".join(f"({letter(i)}). {c}" for i, c in enumerate(options))
    return PRE_PROMPT + SUBTITLE_HEADER + subtitle_text + INSTRUCTION + block + "\n" + POST_PROMPT


def parse_choice(response: str, options: list[str], seed: str) -> str:
    """MMMU-style multiple-choice parsing; `seed` fixes the random fallback."""
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = " " + response + " "
    choices = [letter(i) for i in range(len(options))]
    index2ans = dict(zip(choices, options, strict=True))
    by_text = False
    bracketed = False
    candidates = [c for c in choices if f"({c})" in response]
    if candidates:
        bracketed = True
    if not candidates:
        candidates = [c for c in choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c in choices if index2ans[c].lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()
        return random.Random(int(digest, 16)).choice(choices)
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        positions = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    elif bracketed:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        positions = [response.rfind(f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))]


class LongVideoBench(Benchmark):
    name = "longvideobench"
    unit = "fraction"
    round_digits = 5
    category_fields = ("duration_group", "question_category", "topic_category")

    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        if prediction is None:
            return 0.0
        return 1.0 if parse_choice(prediction.strip(), list(item.options), item.id) == item.answer else 0.0


def _read_subtitles(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"cannot read subtitle file {path}: {exc}") from exc
    if not isinstance(data, list):
        raise BenchmarkError(f"subtitle file {path} does not hold a JSON list")
    return data


def load_longvideobench(annotations: Path, videos: Path | None, subtitles: Path | None) -> LongVideoBench:
    """Without `subtitles` (or when a record's subtitle file is missing) the subtitle text is empty; the
    original would fail instead."""
    path = annotations / "LongVideoBench" / "validation-00000-of-00001.parquet"
    source = relpath(path, annotations)
    cache: dict[str, list[dict]] = {}
    missing: set[str] = set()
    items = []
    for index, rec in enumerate(read_parquet_rows(path)):
        options = []
        for k in range(5):
            opt = rec.get(f"option{k}")
            if opt is None or opt == "N/A":
                break
            options.append(opt)
        subtitle_text = ""
        if subtitles is not None:
            sub_path = Path(subtitles) / rec["subtitle_path"]
            if sub_path.is_file():
                key = str(sub_path)
                if key not in cache:
                    cache[key] = _read_subtitles(sub_path)
                try:
                    subtitle_text = interleaved_subtitles(
                        cache[key], rec["duration"], rec["starting_timestamp_for_subtitles"]
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise BenchmarkError(f"malformed subtitle entry in {sub_path}: {exc!r}") from exc
            else:
                missing.add(rec["subtitle_path"])
        items.append(
            BenchmarkItem(
                benchmark="longvideobench",
                id=f"{source}#{index}",
                source=source,
                index=index,
                task="longvideobench_val_v",
                prompt=longvideobench_prompt(rec["question"], options, subtitle_text),
                answer=letter(int(rec["correct_choice"])),
                video=resolve_video(videos, [rec["video_path"], Path("videos") / rec["video_path"]]),
                media={"video_read_type": "decord"},
                max_new_tokens=32,
                options=tuple(options),
                category={k: rec[k] for k in ("duration_group", "question_category", "topic_category")},
                record=rec,
            )
        )
    if missing:
        warnings.warn(
            f"{len(missing)} LongVideoBench subtitle files are missing under {subtitles} "
            f"(e.g. {sorted(missing)[0]}); those prompts have no subtitle text",
            stacklevel=3,
        )
    return LongVideoBench(items, annotations=annotations, videos=videos, subtitles=subtitles)
