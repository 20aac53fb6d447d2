"""Scoring of model answers on the synthetic evaluation set (pure functions, no I/O).

* `extract_letter` / `score_mc` — multiple choice. Deliberately a little more robust than MVBench's `mcq_acc`
  (REFERENCE §11.1/§11.8): a leading "A" used as an article ("A red circle") is not read as option A.
* `parse_interval` / `iou` — temporal grounding, in the spirit of Charades-STA's `eval_tvg.py` (§11.7) minus its
  quirks: "to" is only replaced as a word, en/em dashes work, "2..5" is unparseable, ``HH:MM:SS`` works.
* `summarize` — per-task accuracy, all-MC accuracy, NIAH grid, grounding R@{0.3,0.5,0.7} and mean IoU.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .tasks import LETTERS, MC_TASKS

_LEAD_PAREN = re.compile(r"^\s*[\(\[]\s*([A-Ea-e])\s*[\)\]]")
_LEAD_ALONE = re.compile(r"^\s*([A-Ea-e])\s*[.):,]?\s*$")
_LEAD_PUNCT = re.compile(r"^\s*([A-E])\s*[.):,]")
_ANY_PAREN = re.compile(r"\(\s*([A-E])\s*\)")
_ANY_UPPER = re.compile(r"\b([A-E])\b")


def extract_letter(prediction: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-text answer chooses, or None.

    In order: a leading "(X)"/"[X]" (any case); the whole answer being one letter ("b", "C."); a leading
    "X." / "X)" / "X:"; the first "(X)" anywhere; the first standalone capital A–E that is not the article
    "A" (followed by a lowercase word); finally, when ``options`` are given, an answer equal to one option's
    text (case-insensitive, trailing period ignored) or containing exactly one option's text as a word.
    """
    text = (prediction or "").strip()
    if not text:
        return None
    for pat in (_LEAD_PAREN, _LEAD_ALONE, _LEAD_PUNCT, _ANY_PAREN):
        m = pat.search(text)
        if m:
            return m.group(1).upper()
    for m in _ANY_UPPER.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end() :]):
            continue
        return m.group(1)
    if options:
        low = text.lower().rstrip(".").strip()
        opts = [o.lower() for o in options]
        if low in opts:
            return LETTERS[opts.index(low)]
        hits = [i for i, o in enumerate(opts) if re.search(r"\b" + re.escape(o) + r"\b", low)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


def score_mc(prediction: str, answer_letter: str, options: Sequence[str] | None = None) -> bool:
    """True iff the letter chosen by ``prediction`` (see `extract_letter`) is ``answer_letter``."""
    return extract_letter(prediction, options) == answer_letter.strip().strip("()").upper()


_NUM = r"(\d+(?:\.\d+)?)"
_UNIT = r"\s*(?:s|sec|secs|second|seconds)?\s*"
_RANGE = re.compile(_NUM + _UNIT + r"(?:-|–|—|~)\s*" + _NUM)
_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2}(?:\.\d+)?)\b")
_KEYWORDS = ("start", "end", "happen", "begin", "from", "until", "between")


_CAPTION_TOTAL = re.compile(r"In total (\d+) shapes? appears?")


def caption_total(caption: str) -> int | None:
    """N of a caption's closing "In total N shapes appear." (the training captions' last sentence), else None."""
    found = _CAPTION_TOTAL.search(caption)
    return int(found.group(1)) if found else None


def _clock_seconds(m: re.Match) -> float:
    h, mi, s = m.group(1), m.group(2), m.group(3)
    return (int(h) if h else 0) * 3600 + int(mi) * 60 + float(s)


def parse_interval(text: str) -> tuple[float, float] | None:
    """The first time interval (start, end) in seconds named by ``text``, ordered so start <= end; else None.

    Understands "3.5 - 7", "3.5s to 7s", "between 3 and 7 seconds", "from 3 to 7", "00:00:03 - 00:00:07",
    and keyword sentences ("starts at 3.5 ... ends at 7"). Malformed numbers such as "2..5" give None.
    """
    if not text:
        return None
    low = text.lower()
    if re.search(r"\d\.\.", low):
        return None
    clocks = list(_CLOCK.finditer(low))
    if len(clocks) >= 2:
        a, b = _clock_seconds(clocks[0]), _clock_seconds(clocks[1])
        return (min(a, b), max(a, b))
    low = re.sub(r"\bto\b|\band\b|\buntil\b|\btill\b", "-", low)
    m = _RANGE.search(low)
    if m:
        a, b = float(m.group(1)), float(m.group(2))
        return (min(a, b), max(a, b))
    nums = []
    for sentence in re.split(r"[!?\n;]|\.(?!\d)", low):
        if any(k in sentence for k in _KEYWORDS):
            found = re.findall(r"\d+(?:\.\d+)?", sentence)
            nums.extend(float(x) for x in found[:2])
    if len(nums) >= 2:
        a, b = nums[0], nums[1]
        return (min(a, b), max(a, b))
    return None


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Temporal IoU of two [start, end] intervals (Charades-STA formula; 0 for empty unions)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _key(x: float) -> str:
    return f"{float(x):g}"


def score_record(record: dict) -> dict:
    """Score one record carrying ``"prediction"``: adds ``correct`` (MC/NIAH) or ``iou`` (grounding)."""
    pred = record.get("prediction") or ""
    task = record["task"]
    if task == "grounding":
        interval = parse_interval(pred)
        return {
            "interval": list(interval) if interval else None,
            "iou": iou(interval, record["timestamp"]) if interval else 0.0,
        }
    if "answer_letter" in record:
        return {
            "letter": extract_letter(pred, record.get("options")),
            "correct": score_mc(pred, record["answer_letter"], record.get("options")),
        }
    return {}


def summarize(records: Iterable[dict]) -> dict:
    """Aggregate scores of records that carry a ``"prediction"`` string.

    Returns ``{"num_records", "per_task": {task: accuracy}, "counts": {task: n}, "mc_accuracy",
    "niah": {haystack_seconds: {depth: accuracy}}, "niah_accuracy", "grounding_r@0.3", "grounding_r@0.5",
    "grounding_r@0.7", "grounding_miou"}``. Accuracies are fractions in [0, 1]; grid keys are strings such
    as ``"128"`` and ``"0.25"``; grounding's entry in ``per_task`` is R@0.5. Metrics with no records are None.
    """
    per_task: dict[str, list[float]] = defaultdict(list)
    niah: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    mc: list[float] = []
    ious: list[float] = []
    n = 0
    for rec in records:
        n += 1
        s = score_record(rec)
        task = rec["task"]
        if task == "grounding":
            ious.append(s["iou"])
            per_task[task].append(float(s["iou"] >= 0.5))
        elif "correct" in s:
            ok = float(s["correct"])
            per_task[task].append(ok)
            if task in MC_TASKS:
                mc.append(ok)
            if task == "niah":
                niah[_key(rec["haystack_seconds"])][_key(rec["depth"])].append(ok)

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    def recall(t):
        return mean([float(x >= t) for x in ious])

    niah_grid = {
        h: {d: mean(v) for d, v in sorted(row.items(), key=lambda kv: float(kv[0]))}
        for h, row in sorted(niah.items(), key=lambda kv: float(kv[0]))
    }
    return {
        "num_records": n,
        "per_task": {t: mean(v) for t, v in sorted(per_task.items())},
        "counts": {t: len(v) for t, v in sorted(per_task.items())},
        "mc_accuracy": mean(mc),
        "niah": niah_grid,
        "niah_accuracy": mean(per_task.get("niah", [])),
        "grounding_r@0.3": recall(0.3),
        "grounding_r@0.5": recall(0.5),
        "grounding_r@0.7": recall(0.7),
        "grounding_miou": mean(ious),
    }
