"""Resumable benchmark runner.

`run_benchmark(benchmark, answer_fn, "out/run.jsonl")` asks `answer_fn(item) -> str` for every item and appends
one JSON line per item (`id`, `benchmark`, `source`, `index`, `task`, `prediction`, `score`, `error`), flushed
and fsynced, so a crash loses at most the item in flight. A restart reads the file, drops a truncated last line,
and skips every item already recorded. An exception from `answer_fn` (missing or broken video, ...) is recorded
as an error (prediction null, score 0; counted as answered and wrong) and the run goes on; KeyboardInterrupt
and SystemExit stop it. Errors are final: delete their lines to retry them. At the end the aggregate is written
next to the JSONL as `<stem>.metrics.json` and `<stem>.metrics.md` and returned.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .bench import Benchmark, BenchmarkError, BenchmarkItem


def _read_records(path: Path) -> list[dict]:
    """Finished records of a prediction file; a truncated or unreadable last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict] = []
    offset = 0
    for i, raw in enumerate(lines):
        complete = i < len(lines) - 1  # the segment after the last newline is never complete
        end = offset + len(raw) + (1 if complete else 0)
        if raw.strip():
            try:
                rec = json.loads(raw) if complete else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict) or "id" not in rec:
                if any(seg.strip() for seg in lines[i + 1 :]):
                    raise BenchmarkError(f"{path}: line {i + 1} is not a prediction record; fix or delete it")
                with open(path, "r+b") as f:  # crash mid-write: drop the partial line
                    f.truncate(offset)
                    f.flush()
                    os.fsync(f.fileno())
                break
            records.append(rec)
        offset = end
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_benchmark(
    benchmark: Benchmark,
    answer_fn: Callable[[BenchmarkItem], str],
    output_jsonl: str | os.PathLike,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Run `answer_fn` over the first `limit` items (all by default), resuming from `output_jsonl`; return the
    aggregate metrics (also written to `<stem>.metrics.json` / `<stem>.metrics.md` beside the JSONL)."""
    from tqdm import tqdm

    out = Path(output_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    items = list(benchmark)[: limit if limit is not None else None]
    done: dict[str, dict] = {}
    for rec in _read_records(out):
        if rec.get("benchmark", benchmark.name) != benchmark.name:
            raise BenchmarkError(f"{out} holds predictions for {rec['benchmark']!r}, not {benchmark.name!r}")
        done.setdefault(rec["id"], rec)
    todo = [item for item in items if item.id not in done]

    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        desc=benchmark.name,
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        with open(out, "a", encoding="utf-8") as f:
            for item in todo:
                rec = _answer(benchmark, answer_fn, item)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                done[item.id] = rec
                bar.update(1)
    finally:
        bar.close()

    results = [
        (item, done[item.id].get("prediction"), float(done[item.id].get("score") or 0.0)) for item in items
    ]
    metrics = benchmark.aggregate(results)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    _write_atomic(
        out.with_name(stem + ".metrics.json"), json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"
    )
    _write_atomic(out.with_name(stem + ".metrics.md"), format_table(metrics))
    return metrics


def _answer(benchmark: Benchmark, answer_fn: Callable[[BenchmarkItem], str], item: BenchmarkItem) -> dict:
    rec = {
        "id": item.id,
        "benchmark": benchmark.name,
        "source": item.source,
        "index": item.index,
        "task": item.task,
        "prediction": None,
        "score": 0.0,
        "error": None,
    }
    try:
        prediction = answer_fn(item)
        if not isinstance(prediction, str):
            raise TypeError(f"answer_fn returned {type(prediction).__name__}, not str")
    except Exception as exc:  # recorded; KeyboardInterrupt / SystemExit propagate
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
    rec["prediction"] = prediction
    try:
        rec["score"] = float(benchmark.score(item, prediction))
    except Exception as exc:  # keep the (costly) prediction even if scoring breaks
        rec["error"] = f"scoring failed: {type(exc).__name__}: {exc}"
    return rec


# -- tables ------------------------------------------------------------------------------------------------
def _fmt(value, unit: str) -> str:
    if isinstance(value, float):
        return f"{value:.5f}" if unit == "fraction" else f"{value:.2f}"
    return str(value)


def format_table(metrics: dict) -> str:
    """Markdown tables of an aggregate: headline metrics, then per task and per category."""
    unit = metrics.get("unit", "percent")
    head = metrics.get("metrics", {})
    lines = [f"## {metrics.get('benchmark', 'benchmark')}", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key, value in head.items():
        lines.append(f"| {key} | {_fmt(value, unit)} |")
    for key in ("count", "answered", "errors"):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]} |")
    lines.append("")
    if unit == "fraction":
        lines += ["Scores are fractions (0-1), not percents.", ""]

    def table(title: str, column: str, rows: dict) -> None:
        if not rows:
            return
        keys = list(next(iter(rows.values())).keys())
        lines.extend([f"### {title}", "", f"| {column} | " + " | ".join(keys) + " |"])
        lines.append("|---" * (len(keys) + 1) + "|")
        for name, stats in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(stats.get(k), unit) for k in keys) + " |")
        lines.append("")

    tasks = metrics.get("tasks") or {}
    if len(tasks) > 1:
        table("tasks", "task", tasks)
    for field, rows in (metrics.get("categories") or {}).items():
        table(field, field, rows)
    return "\n".join(lines)
