"""Charades-STA temporal grounding (`temporal_grounding_charades`), REFERENCE §11.7.

Parsing of the model output (the offline `eval_tvg.py` rules):
1. lowercase; delete the phrase "a specific example is : 20.8 - 30.0 seconds"; every "to" becomes "-";
2. all ``(\\d+\\.*\\d*)\\s*-\\s*(\\d+\\.*\\d*)`` matches give [start, end] pairs;
3. else: sentences (split on "!", "?", newline) containing one of the keywords give their first number
   (``\\d+\\.\\d+`` or ``\\d+``); consecutive numbers are paired (an odd last one is dropped);
4. else: the first HH:MM:SS time of each such sentence, paired the same way;
5. each pair is ordered (min, max); only the first pair is kept.
No pair gives the prediction [gt_end + 10, gt_end + 20] (IoU 0). A number like "2..5" makes the original crash;
here the whole output is treated as unparseable. The score is the IoU; the aggregate gives R@0.3/0.5/0.7
(percent of queries with IoU >= threshold) and mIoU (percent; not computed by the original).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Benchmark, BenchmarkItem, read_json_list, relpath, resolve_video

PRE_PROMPT = (
    "Please find the visual event described by a sentence in the video, determining its starting and ending "
    "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
    "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: "
)
POST_PROMPT = "Please return its start time and end time."
THRESHOLDS = (0.3, 0.5, 0.7)

_EXAMPLE = "a specific example is : 20.8 - 30.0 seconds"
_PAIR = re.compile(r"(\d+\.*\d*)\s*-\s*(\d+\.*\d*)")
_SENTENCE_SPLIT = re.compile(r"[!?\n]")
_NUMBER = re.compile(r"\d+\.\d+|\d+")
_HMS = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")
_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")


def charades_prompt(caption: str) -> str:
    return PRE_PROMPT + caption + ". " + POST_PROMPT


def _pairs(values: list[float]) -> list[tuple[float, float]]:
    values = values[: len(values) // 2 * 2]
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def parse_span(prediction: str) -> tuple[float, float] | None:
    """The first [start, end] pair of a prediction, or None when nothing parses."""
    text = prediction.lower().replace(_EXAMPLE, "").replace("to", "-")
    try:
        pairs = [(float(a), float(b)) for a, b in _PAIR.findall(text)]
    except ValueError:  # e.g. "2..5": the original raises here
        return None
    sentences = [s for s in _SENTENCE_SPLIT.split(text) if any(k in s for k in _KEYWORDS)]
    if not pairs:
        numbers = []
        for s in sentences:
            m = _NUMBER.search(s)
            if m:
                numbers.append(float(m.group(0)))
        pairs = _pairs(numbers)
    if not pairs:
        times = []
        for s in sentences:
            m = _HMS.search(s)
            if m:
                h, mi, se = (int(g) for g in m.groups())
                times.append(float(h * 3600 + mi * 60 + se))
        pairs = _pairs(times)
    if not pairs:
        return None
    a, b = pairs[0]
    return (min(a, b), max(a, b))


def iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    return inter / union if union > 0 else 0.0


class Charades(Benchmark):
    name = "charades"
    metric = "R@0.5"

    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        gt = (float(item.answer[0]), float(item.answer[1]))
        span = parse_span(prediction.strip()) if prediction is not None else None
        if span is None:
            span = (gt[1] + 10, gt[1] + 20)
        return iou(span, gt)

    def aggregate(self, results) -> dict:
        rows = [(item, pred, float(score)) for item, pred, score in results]
        n = len(rows)
        metrics = {}
        for t in THRESHOLDS:
            metrics[f"R@{t}"] = 100.0 * sum(1 for r in rows if r[2] >= t) / n if n else 0.0
        metrics["mIoU"] = 100.0 * sum(r[2] for r in rows) / n if n else 0.0
        return {
            "benchmark": self.name,
            "unit": "percent",
            "metrics": metrics,
            "count": n,
            "answered": n,
            "errors": sum(1 for r in rows if r[1] is None),
            "tasks": {},
            "categories": {},
        }


def load_charades(annotations: Path, videos: Path | None) -> Charades:
    path = annotations / "Temporal_Grounding" / "json" / "temporal_grounding_charades.json"
    source = relpath(path, annotations)
    items = []
    for index, rec in enumerate(read_json_list(path)):
        items.append(
            BenchmarkItem(
                benchmark="charades",
                id=f"{source}#{index}",
                source=source,
                index=index,
                task="temporal_grounding_charades",
                prompt=charades_prompt(rec["caption"]),
                answer=[float(rec["timestamp"][0]), float(rec["timestamp"][1])],
                video=resolve_video(videos, [rec["video"], Path("Charades_v1_480") / rec["video"]]),
                media={"video_read_type": "decord"},
                max_new_tokens=50,
                record=rec,
            )
        )
    return Charades(items, annotations=annotations, videos=videos)
