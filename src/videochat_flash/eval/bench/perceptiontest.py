"""PerceptionTest validation multiple choice (`perceptiontest_val_mc`), REFERENCE §11.6.

The official repo ships no question file. This reads the HF dataset config `mc_question_val`
(`<annotations>/PerceptionTest/mc_question_val/validation-*.parquet`; any `*.parquet` under
`<annotations>/PerceptionTest/` also works). Parsing: first ``\\b([A-D])\\b`` in the
stripped output (case-sensitive) gives the option index; no match is wrong. The accuracy unit of the original's
aggregate is not documented; it is reported in percent here.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    Benchmark,
    BenchmarkError,
    BenchmarkItem,
    letter,
    read_parquet_rows,
    relpath,
    resolve_video,
)

_LETTER = re.compile(r"\b([A-D])\b")


def perceptiontest_prompt(question: str, options: list[str]) -> str:
    lines = "".join(f"\n({letter(i)}). {o}" for i, o in enumerate(options))
    return "\n" + "Question: " + question + lines + "\nOnly give the best option."


def parse_index(prediction: str) -> int | None:
    m = _LETTER.search(prediction.strip())
    return ord(m.group(1)) - ord("A") if m else None


class PerceptionTest(Benchmark):
    name = "perceptiontest"
    category_fields = ("area", "reasoning")

    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        if prediction is None or item.answer is None:
            return 0.0
        idx = parse_index(prediction)
        return 1.0 if idx is not None and letter(idx) == item.answer else 0.0


def _annotation_files(root: Path) -> list[Path]:
    for pattern in (
        "mc_question_val/validation-*.parquet",
        "mc_question_val/*.parquet",
        "**/*.parquet",
    ):
        found = sorted(root.glob(pattern))
        if found:
            return found
    return []


def load_perceptiontest(annotations: Path, videos: Path | None) -> PerceptionTest:
    root = annotations / "PerceptionTest"
    files = _annotation_files(root) if root.is_dir() else []
    if not files:
        raise BenchmarkError(
            f"no PerceptionTest questions under {root} (expected mc_question_val/validation-*.parquet "
            "from the HF dataset lmms-lab/PerceptionTest_Val)"
        )
    items = []
    for path in files:
        source = relpath(path, annotations)
        for index, rec in enumerate(read_parquet_rows(path)):
            options = list(rec["options"])
            answer_id = rec.get("answer_id")
            name = rec["video_name"]
            items.append(
                BenchmarkItem(
                    benchmark="perceptiontest",
                    id=f"{source}#{index}",
                    source=source,
                    index=index,
                    task="perceptiontest_val_mc",
                    prompt=perceptiontest_prompt(rec["question"], options),
                    answer=letter(int(answer_id)) if answer_id not in (None, "") else None,
                    video=resolve_video(videos, [f"{name}.mp4", Path("videos") / f"{name}.mp4"]),
                    media={"video_read_type": "decord"},
                    max_new_tokens=1024,
                    options=tuple(options),
                    category={"area": rec.get("area"), "reasoning": rec.get("reasoning")},
                    record=rec,
                )
            )
    return PerceptionTest(items, annotations=annotations, videos=videos)
