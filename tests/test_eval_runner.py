"""Resumable benchmark runner: JSONL records, restart after interruption or a torn last line, errors, tables."""

import json

import pytest

from videochat_flash.eval import format_table, load_benchmark, run_benchmark
from videochat_flash.eval.bench import BenchmarkError

from .conftest import FIXTURES, require_fixtures

ANN = FIXTURES / "benchmarks"
N = 10


@pytest.fixture(scope="module")
def mvbench():
    require_fixtures(ANN)
    return load_benchmark("mvbench", ANN)


class Fake:
    """Right answer on even indices, empty on odd ones, a broken video on index 3; optionally interrupts."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[int] = []
        self.stop_after = stop_after

    def __call__(self, item):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(item.index)
        if item.index == 3:
            raise FileNotFoundError(f"no such video: {item.video}")
        return item.answer if item.index % 2 == 0 else ""


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_run_records_errors_and_metrics(mvbench, tmp_path):
    out = tmp_path / "run.jsonl"
    fake = Fake()
    m = run_benchmark(mvbench, fake, out, limit=N, progress=False)
    assert fake.calls == list(range(N))
    recs = [json.loads(x) for x in lines(out)]
    assert [r["index"] for r in recs] == list(range(N))
    assert recs[0] == {
        "id": "MVBench/json/action_antonym.json#0",
        "benchmark": "mvbench",
        "source": "MVBench/json/action_antonym.json",
        "index": 0,
        "task": "action_antonym",
        "prediction": "C",
        "score": 1.0,
        "error": None,
    }
    assert recs[3]["prediction"] is None and recs[3]["score"] == 0.0
    assert recs[3]["error"].startswith("FileNotFoundError: no such video")
    assert recs[1]["prediction"] == "" and recs[1]["error"] is None
    # 5 right (even indices), 4 empty (left out of the denominator), 1 error (answered, wrong): 5/6
    assert m["metrics"]["accuracy"] == pytest.approx(500 / 6)
    assert (m["count"], m["answered"], m["errors"]) == (N, 6, 1)
    assert json.loads((tmp_path / "run.metrics.json").read_text()) == m
    md = (tmp_path / "run.metrics.md").read_text()
    assert md == format_table(m)
    assert "| accuracy | 83.33 |" in md and "## mvbench" in md


def test_resume_after_interrupt(mvbench, tmp_path):
    ref = tmp_path / "ref.jsonl"
    run_benchmark(mvbench, Fake(), ref, limit=N, progress=False)

    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(mvbench, Fake(stop_after=4), out, limit=N, progress=False)
    assert len(lines(out)) == 4
    again = Fake()
    m = run_benchmark(mvbench, again, out, limit=N, progress=False)
    assert again.calls == list(range(4, N))  # finished items are skipped (the error at 3 included)
    assert out.read_bytes() == ref.read_bytes()
    assert m["metrics"]["accuracy"] == pytest.approx(500 / 6)
    # a third run has nothing to do and leaves the file alone
    third = Fake()
    run_benchmark(mvbench, third, out, limit=N, progress=False)
    assert third.calls == [] and out.read_bytes() == ref.read_bytes()


def test_resume_repairs_truncated_last_line(mvbench, tmp_path):
    ref = tmp_path / "ref.jsonl"
    run_benchmark(mvbench, Fake(), ref, limit=N, progress=False)
    data = ref.read_bytes()
    cut = data.index(b'"MVBench/json/action_antonym.json#7"') + 5  # crash in the middle of line 8
    out = tmp_path / "run.jsonl"
    out.write_bytes(data[:cut])
    again = Fake()
    run_benchmark(mvbench, again, out, limit=N, progress=False)
    assert again.calls == [7, 8, 9]
    assert out.read_bytes() == ref.read_bytes()
    ids = [json.loads(x)["id"] for x in lines(out)]
    assert len(ids) == len(set(ids)) == N


def test_limit_extension_and_broken_middle_line(mvbench, tmp_path):
    out = tmp_path / "run.jsonl"
    run_benchmark(mvbench, Fake(), out, limit=3, progress=False)
    more = Fake()
    m = run_benchmark(mvbench, more, out, limit=5, progress=False)
    assert more.calls == [3, 4] and m["count"] == 5
    text = lines(out)
    out.write_text("\n".join([text[0], "{not json", *text[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="line 2"):
        run_benchmark(mvbench, Fake(), out, limit=5, progress=False)


def test_other_benchmark_file_and_bad_return(mvbench, tmp_path):
    require_fixtures(ANN)
    out = tmp_path / "run.jsonl"
    charades = load_benchmark("charades", ANN)
    m = run_benchmark(charades, lambda item: 42, out, limit=2, progress=False)
    rec = json.loads(lines(out)[0])
    assert rec["error"] == "TypeError: answer_fn returned int, not str" and rec["prediction"] is None
    assert m["metrics"]["R@0.5"] == 0.0 and m["errors"] == 2
    with pytest.raises(BenchmarkError, match="holds predictions for 'charades'"):
        run_benchmark(mvbench, Fake(), out, limit=2, progress=False)


def test_charades_run_and_table(tmp_path):
    require_fixtures(ANN)
    charades = load_benchmark("charades", ANN)

    def answer(item):
        s, e = item.answer
        return f"The event happens in the {s} - {e} seconds." if item.index % 2 == 0 else "no idea"

    m = run_benchmark(charades, answer, tmp_path / "c.jsonl", limit=4, progress=False)
    assert m["metrics"] == pytest.approx({"R@0.3": 50.0, "R@0.5": 50.0, "R@0.7": 50.0, "mIoU": 50.0})
    md = format_table(m)
    assert "| R@0.3 | 50.00 |" in md and "| mIoU | 50.00 |" in md


def test_progress_bar_on_stderr(mvbench, tmp_path, capsys):
    run_benchmark(mvbench, Fake(), tmp_path / "p.jsonl", limit=2, progress=True)
    captured = capsys.readouterr()
    assert "mvbench" in captured.err and "2/2" in captured.err
    assert captured.out == ""


def test_format_table_sections(mvbench):
    items = [it for it in mvbench if it.task in ("action_antonym", "action_count")][:1] + [
        it for it in mvbench if it.task == "action_count"
    ][:1]
    m = mvbench.aggregate([(items[0], items[0].answer, 1.0), (items[1], "", 0.0)])
    md = format_table(m)
    assert "### tasks" in md
    assert "| action_antonym | 100.00 | 1 | 1 |" in md
    assert "| action_count | 0.00 | 1 | 0 |" in md
