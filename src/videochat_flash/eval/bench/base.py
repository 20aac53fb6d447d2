"""Shared pieces of the standard benchmarks: the item record, the `Benchmark` base class, file reading,
video path resolution and the sample-weighted aggregation rules of lmms-eval (REFERENCE §11)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import VideoChatFlashError


class BenchmarkError(VideoChatFlashError, ValueError):
    """A benchmark name, annotation folder or prediction file the user pointed at is unusable."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One question of a benchmark.

    `prompt` is the exact text the original harness passes to the model (before `<image>` and the time message
    are added, §11). `media` is the original's media_dict (`video_read_type`, and `start`/`end` for clips).
    `answer` is the ground-truth letter for multiple-choice benchmarks (None when the official answer text is not
    among the candidates) and `[start, end]` in seconds for Charades-STA. `category` holds the fields the original
    breaks results down by (e.g. Video-MME `duration`, `domain`, ...). `record` is the raw annotation record.
    """

    benchmark: str
    id: str
    source: str
    index: int
    task: str
    prompt: str
    answer: Any
    video: str | None
    media: dict
    max_new_tokens: int
    options: tuple[str, ...] = ()
    category: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict, repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.benchmark, self.id))


class Benchmark:
    """A loaded benchmark: an ordered, indexable collection of `BenchmarkItem` plus the original's scoring.

    Subclasses set `name`, `unit` ("percent" or "fraction"), `skip_empty` (empty predictions leave a task's
    denominator, as in `mcq_acc`), `weighted_tasks` (overall = sample-weighted mean of per-task scores) and
    `category_fields`, and implement `score`.
    """

    name: str = ""
    max_frames: int = 512
    unit: str = "percent"
    metric: str = "accuracy"
    skip_empty: bool = False
    weighted_tasks: bool = False
    category_fields: tuple[str, ...] = ()
    round_digits: int | None = None

    def __init__(
        self,
        items: Sequence[BenchmarkItem],
        *,
        annotations: Path,
        videos: Path | None = None,
        subtitles: Path | None = None,
    ):
        self.items: list[BenchmarkItem] = list(items)
        self.annotations = annotations
        self.videos = videos
        self.subtitles = subtitles
        tasks: list[str] = []
        for item in self.items:
            if item.task not in tasks:
                tasks.append(item.task)
        self.tasks: list[str] = tasks

    # -- collection protocol -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[BenchmarkItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> BenchmarkItem:
        return self.items[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, items={len(self.items)}, tasks={len(self.tasks)})"

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        """Score one prediction (the model output; it is stripped first, as the original wrapper does)."""
        raise NotImplementedError

    def aggregate(self, results: Iterable[tuple[BenchmarkItem, str | None, float]]) -> dict:
        """Metrics over `(item, prediction, score)` triples, as the original reports them.

        A prediction of None marks an item whose answer could not be produced (runner error): it counts as
        answered and wrong. An empty (after strip) prediction is left out of the denominator where the original
        does so (`mcq_acc` benchmarks); group/overall weights still use the full sample count per task.
        """
        rows = [(item, pred, float(score)) for item, pred, score in results]
        by_task: dict[str, list] = {}
        for row in rows:
            by_task.setdefault(row[0].task, []).append(row)
        order = [t for t in self.tasks if t in by_task] + [t for t in by_task if t not in self.tasks]
        tasks = {t: self._stats(by_task[t]) for t in order}
        overall = self._stats(rows)
        if self.weighted_tasks and rows:
            total = sum(st["count"] for st in tasks.values())
            value = sum(st[self.metric] * st["count"] for st in tasks.values()) / total
            overall[self.metric] = self._round(value)
        categories: dict[str, dict] = {}
        for fld in self.category_fields:
            groups: dict[str, list] = {}
            for row in rows:
                value = row[0].category.get(fld)
                values = value if isinstance(value, (list, tuple)) else [value]
                for v in values:
                    groups.setdefault(str(v), []).append(row)
            categories[fld] = {k: self._stats(v) for k, v in groups.items()}
        return {
            "benchmark": self.name,
            "unit": self.unit,
            "metrics": {self.metric: overall[self.metric]},
            "count": overall["count"],
            "answered": overall["answered"],
            "errors": sum(1 for _, pred, _ in rows if pred is None),
            "tasks": tasks,
            "categories": categories,
        }

    def _answered(self, pred: str | None) -> bool:
        return not (self.skip_empty and pred is not None and pred.strip() == "")

    def _stats(self, rows: list) -> dict:
        answered = [r for r in rows if self._answered(r[1])]
        correct = sum(r[2] for r in answered)
        value = correct / len(answered) if answered else 0.0
        if self.unit == "percent":
            value *= 100.0
        return {self.metric: self._round(value), "count": len(rows), "answered": len(answered)}

    def _round(self, value: float) -> float:
        return round(value, self.round_digits) if self.round_digits is not None else value


# -- file helpers ------------------------------------------------------------------------------------------
def read_json_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"cannot read annotation file {path}: {exc}") from exc
    if not isinstance(data, list):
        raise BenchmarkError(f"annotation file {path} does not hold a JSON list")
    return data


def read_parquet_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"annotation file not found: {path}")
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise BenchmarkError(f"reading {path.name} needs pyarrow (pip install pyarrow)") from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:
        raise BenchmarkError(f"cannot read parquet file {path}: {exc}") from exc


def relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def resolve_video(videos: Path | None, candidates: Iterable[str | Path]) -> str | None:
    """First candidate (relative to `videos`, or absolute) that exists, else the first one; None without `videos`."""
    if videos is None:
        return None
    paths = [Path(videos) / c for c in candidates]
    for p in paths:
        if p.exists():
            return str(p)
    return str(paths[0])


def letter(i: int) -> str:
    return chr(ord("A") + i)
