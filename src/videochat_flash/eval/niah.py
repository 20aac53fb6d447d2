"""Needle-in-a-video-haystack: single-hop and multi-hop NIAH (REFERENCE §10), plus builders for new needle sets.

Embedding level (the original protocol, default)::

    needles = load_needles("niah-coco-singlehop_20.json", images="NIAH-Video/")
    result = run_niah(model, "haystack.mp4", needles, frames=(1000, 2000), output_dir="out/niah")

* The haystack video is encoded once (`encode_video`, token cache) into 16 tokens per frame; a "frame" is a
  16-token slice of that sequence, as in the original (which views each 8-frame encoding as 8 × 16 tokens).
  When the video yields fewer frames than a test asks for, the haystack is repeated (frame i is haystack frame
  i mod F); the original encoded ~5000 frames and concatenated them with themselves for its 10,000-frame runs.
* A needle is one image padded to a square with the mean colour, preprocessed like a frame and repeated 4× as
  one 4-frame clip: 64 tokens, i.e. 4 frame slots.
* Single hop, for each frame count N and depth d: q = int(d·N) frames, visual = haystack[:q] + needle +
  haystack[q:N]. Multi hop: needle_0, then for k = 1..n−1 haystack[int((k−1)·N/(n−1)) : int(k·N/(n−1))] and
  needle_k (images in file order).
* Sequence = PRE + visual + question + POST (+ answer, teacher forced): the original's prompt pieces, no
  ``<image>`` token, no time message, positions 0..L−1. The prediction is the argmax at positions
  prompt_len−1 … prompt_len+len(answer)−2, decoded, lower-cased, "(" and ")" removed; it is correct iff it equals
  the lower-cased answer. We get those logits by prefilling the prompt and feeding the answer tokens one at a
  time through the KV cache, which equals the original's single teacher-forced forward (causal attention) but
  never materialises logits for the whole sequence. The original's padding of the sequence to a multiple of
  2·sequence-parallel size sits after the scored positions and cannot change them, so it is left out.
* Contexts beyond 32K tokens: the original ran the LLM with YaRN ×4 (`apply_yarn`, ``--yarn-factor 4``).

Differences from the original worth knowing: haystack frames are sampled by the normal inference sampler
(dynamic_fps1: ≈1 fps, frame count a multiple of 8) and resized to S×S like every video frame, where the
original took frames 0, f, 2f, … (f = round(fps)) and padded each to a square first; the LLM runs in our
implementation (KV-cached, batch 1) rather than transformers + xtuner sequence parallelism.

Pixel level (``pixel=True``): the needle image (padded to a square, resized to S×S) is inserted as 4 frames
into the decoded haystack frames, and the whole video goes through the normal pipeline — `chat` with the
frames as an array (time message, chat template, encoder, LLM) with greedy decoding of len(answer) tokens,
scored the same way. Needle positions are rounded down to a clip boundary so each needle is one clip. All
frames are held in memory (N·S·S·3 bytes: 10,000 frames at 448 px ≈ 6 GB), and the chat path truncates
prompts to the model's ``tokenizer_model_max_length`` (≈2000 frames at 32K).

Builders: `build_multi_hop` turns a JSON list of ``{image, caption[, question, options, answer]}`` into a
multi-hop file in the official format plus the rendered instruction images; `build_single_hop` does the same
for single-hop records. Outputs of `run_niah`: ``niah.json`` (accuracy per cell, overall), ``niah.jsonl``
(one line per scored question; a rerun resumes from it) and ``niah_heatmap.png``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import VideoChatFlashError

PRE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
POST = "<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_FRAMES = tuple(range(1000, 10001, 1000))
# numpy.arange(0, 1.2, 0.2) as the original: 0.6000000000000001 included (int(d·N) uses this exact value).
DEFAULT_DEPTHS = tuple(k * 0.2 for k in range(6))
NEEDLE_FRAMES = 4  # a needle image fills one clip
OPTION_LETTERS = "ABCDEFGH"
MULTI_HOP_QUESTION1 = (
    "Locate the final frame based on the instructions in the image, and choose the captions that best "
    "describe the frame: \nOptions: "
)
MULTI_HOP_QUESTION2 = (
    "Locate the final frame based on the instructions in the image, and answer the following question "
    "based on the final frame: "
)
ANSWER_SUFFIX = "\nOnly give the best option. Best option: ("


class NiahError(VideoChatFlashError, ValueError):
    """A needle file, image folder, frame list or output folder the user pointed at is unusable."""


# ====================================================================== needle files
@dataclass(frozen=True)
class SingleHopNeedle:
    id: str
    image: Path
    question: str
    answer: str


@dataclass(frozen=True)
class MultiHopNeedle:
    id: str
    images: tuple[Path, ...]
    question1: str  # caption of the final frame (multiple choice)
    answer1: str
    question2: str | None = None  # question about the final frame (multiple choice); optional in our builds
    answer2: str | None = None


def _read_list(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NiahError(f"needle file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NiahError(f"cannot read needle file {path}: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise NiahError(f"needle file {path} must hold a JSON list of objects")
    return data


def _image_path(images: Path | None, name: str, source: Path) -> Path:
    """``images/name``, else ``images/<basename>``, else ``name`` itself (absolute or relative to cwd)."""
    candidates = []
    if images is not None:
        candidates += [images / name, images / Path(name).name]
    candidates.append(Path(name))
    for c in candidates:
        if c.is_file():
            return c
    where = f" under {images}" if images is not None else ""
    raise NiahError(
        f"needle image {name!r} of {source} not found{where} (pass the image folder with --images)"
    )


def needle_kind(path: str | os.PathLike) -> str:
    """ "single-hop" (records with ``image``) or "multi-hop" (records with ``images``)."""
    records = _read_list(Path(path))
    if records and all("images" in r for r in records):
        return "multi-hop"
    if all("image" in r for r in records):
        return "single-hop"
    raise NiahError(f"{path}: records need either 'image' (single hop) or 'images' (multi hop)")


def load_single_hop(
    path: str | os.PathLike, images: str | os.PathLike | None = None
) -> list[SingleHopNeedle]:
    """Records ``{question, answer, image, id}`` of the official single-hop file (§10.2)."""
    path, root = Path(path), Path(images) if images is not None else None
    out = []
    for i, r in enumerate(_read_list(path)):
        missing = [k for k in ("question", "answer", "image") if k not in r]
        if missing:
            raise NiahError(f"{path} record {i} lacks {', '.join(missing)}")
        out.append(
            SingleHopNeedle(
                str(r.get("id", i)), _image_path(root, r["image"], path), r["question"], r["answer"]
            )
        )
    return out


def load_multi_hop(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[MultiHopNeedle]:
    """Records ``{images, question1, answer1, question2, answer2}`` of the official multi-hop file (§10.2)."""
    path, root = Path(path), Path(images) if images is not None else None
    out = []
    for i, r in enumerate(_read_list(path)):
        missing = [k for k in ("images", "question1", "answer1") if k not in r]
        if missing:
            raise NiahError(f"{path} record {i} lacks {', '.join(missing)}")
        if len(r["images"]) < 2:
            raise NiahError(f"{path} record {i} has {len(r['images'])} images; multi hop needs at least 2")
        out.append(
            MultiHopNeedle(
                str(r.get("id", i)),
                tuple(_image_path(root, name, path) for name in r["images"]),
                r["question1"],
                r["answer1"],
                r.get("question2"),
                r.get("answer2"),
            )
        )
    return out


def load_needles(path: str | os.PathLike, images: str | os.PathLike | None = None):
    """Single- or multi-hop needles, whichever the file holds."""
    if needle_kind(path) == "multi-hop":
        return load_multi_hop(path, images)
    return load_single_hop(path, images)


# ====================================================================== layouts (shared by both variants)
def _check_frames(frames: Sequence[int], depths: Sequence[float] | None = None) -> None:
    if not frames or any(int(n) < 1 for n in frames):
        raise NiahError(f"frame counts must be positive integers, got {list(frames)}")
    if depths is not None and (not depths or any(not 0.0 <= d <= 1.0 for d in depths)):
        raise NiahError(f"depths must lie in [0, 1], got {list(depths)}")


def _down(x: int, align: int) -> int:
    return (x // align) * align


def single_hop_layout(num_frames: int, depth: float, align: int = 1) -> list[tuple]:
    """``[("haystack", 0, q), ("needle", 0), ("haystack", q, N)]`` with q = int(depth·N) (rounded down to ``align``)."""
    q = _down(int(depth * num_frames), align)
    return [("haystack", 0, q), ("needle", 0), ("haystack", q, num_frames)]


def multi_hop_layout(num_frames: int, num_needles: int, align: int = 1) -> list[tuple]:
    """needle_0, then haystack[int((k−1)·N/(n−1)) : int(k·N/(n−1))] + needle_k for k = 1..n−1 (§10.3)."""
    if num_needles < 2:
        raise NiahError(f"multi hop needs at least 2 needle images, got {num_needles}")
    interval = num_frames / (num_needles - 1)
    layout: list[tuple] = [("needle", 0)]
    for k in range(1, num_needles):
        a, b = _down(int((k - 1) * interval), align), _down(int(k * interval), align)
        layout += [("haystack", a, b), ("needle", k)]
    return layout


def layout_frames(layout: Sequence[tuple], needle_frames: int = NEEDLE_FRAMES) -> int:
    return sum(item[2] - item[1] if item[0] == "haystack" else needle_frames for item in layout)


# ====================================================================== embeddings
def apply_yarn(
    model, factor: float | None, original_max_position_embeddings: int | None = None
) -> dict | None:
    """Switch the loaded model's LLM to YaRN RoPE scaling (``factor`` None or 1 switches back to plain RoPE).

    Sets ``rope_scaling = {"type": "yarn", "factor": F, "original_max_position_embeddings": M}`` (M defaults
    to the config's ``max_position_embeddings``, 32768 for the released models) on the model's `Qwen2Config`
    and rebuilds the LLM's rotary embedding from it — the one module that reads the field; it holds no
    weights. This is what the NIAH runs of the paper did by editing config.json (§10). Returns the setting.
    """
    from ..model.rope import RotaryEmbedding

    llm_cfg = model.config.llm
    scaling = None
    if factor is not None and float(factor) != 1.0:
        if float(factor) < 1.0:
            raise NiahError(f"--yarn-factor must be >= 1, got {factor}")
        scaling = {
            "type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": int(
                original_max_position_embeddings or llm_cfg.max_position_embeddings
            ),
        }
    new_cfg = replace(llm_cfg, rope_scaling=scaling, ignore_rope_scaling=False)
    model.config = replace(model.config, llm=new_cfg)
    model.llm.cfg = new_cfg
    model.llm.rope = RotaryEmbedding(new_cfg)
    return scaling


def _open_image(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | os.PathLike):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise NiahError(f"cannot read needle image {image}: {exc}") from None
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def needle_frame(image, size: int) -> np.ndarray:
    """The needle as one S×S uint8 frame: padded to a square with the mean colour, bicubic resize (§10.1, §3.1)."""
    from PIL import Image

    from ..model.preprocess import pad_to_square

    square = pad_to_square(_open_image(image))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC))


def needle_tokens(model, image) -> torch.Tensor:
    """One needle image -> ``[16·4, D]`` visual tokens (the image repeated as one 4-frame clip)."""
    frame = needle_frame(image, model.config.image_size)
    clip = np.repeat(frame[None], model.config.frames_per_clip, axis=0)
    return model.encode_frames(clip).cpu()


def haystack_tokens(model, video, max_frames: int, *, cache=None, progress: bool = False) -> torch.Tensor:
    """The haystack as ``[F, 16, D]``: `encode_video` (≈1 fps, cached) viewed as 16-token frames."""
    from ..inference.session import encode_video

    tokens = encode_video(model, video, max_num_frames=int(max_frames), cache=cache, progress=progress)
    per_frame = model.config.projector.tokens_per_frame
    return tokens.tokens.reshape(-1, per_frame, tokens.tokens.shape[-1])


@dataclass
class Segment:
    kind: str  # "text" | "haystack" | "needle"
    name: str  # "pre", "question", "post", "answer", "haystack[a:b]", "needle k"
    start: int  # first token position
    length: int


@dataclass
class NiahSequence:
    """A teacher-forced NIAH sequence: prompt embeddings, answer ids and where everything sits."""

    embeds: torch.Tensor  # [prompt_len, D]: PRE + visual + question + POST (no answer)
    answer_ids: list[int]
    segments: list[Segment]
    visual: tuple[int, int]  # (start, count) of the visual block

    @property
    def prompt_len(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def score_positions(self) -> list[int]:
        """Positions whose argmax predicts the answer: prompt_len−1 … prompt_len+len(answer)−2."""
        return list(range(self.prompt_len - 1, self.prompt_len + len(self.answer_ids) - 1))

    def needle_spans(self) -> list[tuple[int, int]]:
        return [(s.start, s.start + s.length) for s in self.segments if s.kind == "needle"]


class SequenceBuilder:
    """Tokenised prompt pieces and the embedding-level assembly of §10.3."""

    def __init__(self, model):
        if model.tokenizer is None:
            raise NiahError("the model has no tokenizer; load it with VideoChatFlash.from_pretrained")
        self.model = model
        self.tokenizer = model.tokenizer
        self.pre_ids = self.tokenizer.encode(PRE)
        self.post_ids = self.tokenizer.encode(POST)

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        embed = self.model.llm.model.embed_tokens
        return embed(torch.as_tensor(list(ids), dtype=torch.long, device=embed.weight.device))

    def build(
        self,
        layout: Sequence[tuple],
        haystack: torch.Tensor,
        needles: Sequence[torch.Tensor],
        question: str,
        answer: str,
    ) -> NiahSequence:
        """Embeddings of PRE + visual(layout) + question + POST; ``haystack`` [F, 16, D], needles [64, D] each."""
        device = self.model.llm.model.embed_tokens.weight.device
        dtype = self.model.llm.model.embed_tokens.weight.dtype
        pieces, segments, pos = [], [], 0

        def add(kind: str, name: str, tensor: torch.Tensor) -> None:
            nonlocal pos
            pieces.append(tensor.to(device=device, dtype=dtype))
            segments.append(Segment(kind, name, pos, int(tensor.shape[0])))
            pos += int(tensor.shape[0])

        with torch.inference_mode():
            add("text", "pre", self._embed(self.pre_ids))
            visual_start = pos
            frames = haystack.shape[0]
            for item in layout:
                if item[0] == "needle":
                    add("needle", f"needle {item[1]}", needles[item[1]])
                elif item[2] > item[1]:
                    idx = torch.arange(item[1], item[2], device=haystack.device) % frames
                    add("haystack", f"haystack[{item[1]}:{item[2]}]", haystack[idx].flatten(0, 1))
            visual = (visual_start, pos - visual_start)
            q_ids = self.tokenizer.encode(question)
            if q_ids:
                add("text", "question", self._embed(q_ids))
            add("text", "post", self._embed(self.post_ids))
            embeds = torch.cat(pieces)
        answer_ids = self.tokenizer.encode(answer)
        if not answer_ids:
            raise NiahError(f"empty answer for question {question[:60]!r}")
        segments.append(Segment("text", "answer", pos, len(answer_ids)))
        return NiahSequence(embeds, answer_ids, segments, visual)


@torch.inference_mode()
def teacher_forced_predictions(
    llm, seq: NiahSequence, *, compression=None, chunk_tokens: int | None = None
) -> list[int]:
    """Argmax ids at ``seq.score_positions`` with the answer teacher-forced.

    The prompt is prefilled (in ``chunk_tokens`` pieces if given, to bound activation memory), then the answer
    tokens but the last are fed one by one; each step's logits are the next position's. ``compression`` drops
    visual tokens inside the LLM (§7) — an extension, the original NIAH runs without it.
    """
    embeds = seq.embeds[None]
    if compression is not None or not chunk_tokens or chunk_tokens >= seq.prompt_len:
        cache = llm.new_cache(reserve=len(seq.answer_ids) + 1)
        logits = llm.prefill(embeds, cache, visual=seq.visual, compression=compression).logits
    else:
        cache = llm.new_cache(reserve=seq.prompt_len + len(seq.answer_ids))  # one allocation for all chunks
        for start in range(0, seq.prompt_len, int(chunk_tokens)):
            logits = llm.prefill(embeds[:, start : start + int(chunk_tokens)], cache).logits
    preds = [int(logits.argmax())]
    for token in seq.answer_ids[:-1]:
        preds.append(int(llm.decode(token, cache).argmax()))
    return preds


def normalise_prediction(text: str) -> str:
    """Lower-cased with "(" and ")" removed (the original's comparison form)."""
    return text.lower().replace("(", "").replace(")", "")


def is_correct(prediction: str, answer: str) -> bool:
    return normalise_prediction(prediction) == answer.lower()


# ====================================================================== the evaluation
def _depth_key(d: float) -> str:
    return f"{float(d):g}"


class _Predictions:
    """Append-only JSONL of scored questions with a header line; a rerun with equal settings resumes."""

    def __init__(self, path: Path | None, header: dict):
        self.path = path
        self.done: dict[str, dict] = {}
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            lines = path.read_text(encoding="utf-8").split("\n")
            complete = lines[:-1]  # the part after the last newline is a torn write
            try:
                first = json.loads(complete[0]) if complete else None
            except json.JSONDecodeError:
                first = None
            if not isinstance(first, dict) or first.get("header") != header:
                raise NiahError(
                    f"{path} holds a run with other settings (model, haystack, needles or variant); "
                    "use another --output folder or delete it"
                )
            for line in complete[1:]:
                if line.strip():
                    rec = json.loads(line)
                    self.done[rec["key"]] = rec
            if lines[-1]:
                path.write_text("\n".join(complete) + "\n", encoding="utf-8")
        else:
            path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")

    def add(self, rec: dict) -> None:
        self.done[rec["key"]] = rec
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


def _questions(needle) -> list[tuple[str, str, str]]:
    """(tag, question, answer) of a needle: one for single hop, caption (+ QA) for multi hop."""
    if isinstance(needle, SingleHopNeedle):
        return [("q", needle.question, needle.answer)]
    out = [("caption", needle.question1, needle.answer1)]
    if needle.question2 and needle.answer2:
        out.append(("qa", needle.question2, needle.answer2))
    return out


def _needle_images(needle) -> tuple:
    return (needle.image,) if isinstance(needle, SingleHopNeedle) else tuple(needle.images)


def run_niah(
    model,
    haystack,
    needles: Sequence[SingleHopNeedle] | Sequence[MultiHopNeedle],
    *,
    frames: Sequence[int] = DEFAULT_FRAMES,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    pixel: bool = False,
    output_dir: str | os.PathLike | None = None,
    cache=None,
    haystack_frames: int | None = None,
    chunk_tokens: int | None = None,
    compression=None,
    progress: bool = True,
    heatmap: bool = True,
    model_name: str | None = None,
) -> dict:
    """Run single- or multi-hop NIAH over every (frame count[, depth]) and needle; return the results dict.

    ``haystack``: a video path (or anything `encode_video` / `load_video` accept). ``haystack_frames``: how many
    frames to take from it at most (default: the largest frame count; fewer are repeated). With
    ``output_dir`` the results go to ``niah.json``, ``niah.jsonl`` (resumable) and ``niah_heatmap.png``.
    """
    if not needles:
        raise NiahError("no needles to test")
    multi = isinstance(needles[0], MultiHopNeedle)
    if any(isinstance(n, MultiHopNeedle) != multi for n in needles):
        raise NiahError("needles mix single-hop and multi-hop records")
    frames = [int(n) for n in frames]
    depths = [float(d) for d in depths]
    _check_frames(frames, None if multi else depths)
    kind = "multi-hop" if multi else "single-hop"
    variant = "pixel" if pixel else "embedding"
    out_dir = Path(output_dir) if output_dir is not None else None
    take = int(haystack_frames or max(frames))
    header = {  # JSON-normalised so it compares equal to the copy read back from disk
        "kind": kind,
        "variant": variant,
        "model": model_name or getattr(model, "name_or_path", None),
        "haystack": _describe(haystack),
        "haystack_frames": take,
        "rope_scaling": model.config.llm.rope_scaling,
        "compression": None if compression is None else asdict(compression),
        "needles": [[str(p) for p in _needle_images(n)] for n in needles],
    }
    header = json.loads(json.dumps(header))
    store = _Predictions(out_dir / "niah.jsonl" if out_dir is not None else None, header)
    cells = [(n, None) for n in frames] if multi else [(n, d) for n in frames for d in depths]
    jobs = [(n, d, needle) for n, d in cells for needle in needles]
    todo = [
        j for j in jobs if any(_key(j[0], j[1], j[2], t) not in store.done for t, _, _ in _questions(j[2]))
    ]

    hay_count = None
    max_len = 0
    if todo:
        if pixel:
            hay_count, max_len = _run_pixel(model, haystack, todo, store, take, compression, progress)
        else:
            hay_count, max_len = _run_embedding(
                model, haystack, todo, store, take, cache, chunk_tokens, compression, progress
            )
    done = list(store.done.values())  # also what an earlier, resumed run recorded
    hay_count = hay_count or max((r.get("haystack_frames") or 0 for r in done), default=0) or None
    max_len = max([max_len, *(r.get("sequence_length") or 0 for r in done)])
    result = summarize(done, kind=kind, frames=frames, depths=depths, needles=needles)
    result.update(
        {
            "variant": variant,
            "model": header["model"],
            "haystack": header["haystack"],
            "haystack_frames": hay_count,
            "haystack_repeated": None if hay_count is None else hay_count < max(frames),
            "rope_scaling": model.config.llm.rope_scaling,
            "compression": header["compression"],
            "max_sequence_length": max_len or None,
        }
    )
    notes = []
    if max_len > model.config.llm.max_position_embeddings and not model.config.llm.rope_scaling:
        notes.append(
            f"sequences up to {max_len} tokens exceed max_position_embeddings "
            f"{model.config.llm.max_position_embeddings} without rope scaling (the paper used --yarn-factor 4)"
        )
    limit = model.config.tokenizer_model_max_length
    if pixel and limit and max_len > limit:
        notes.append(f"the chat path truncated prompts longer than tokenizer_model_max_length {limit}")
    result["notes"] = notes
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "niah.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / "niah.json")
        if heatmap:
            draw_heatmap(result, out_dir / "niah_heatmap.png")
    return result


def _describe(source) -> str:
    if isinstance(source, np.ndarray | torch.Tensor):
        return f"<frames {tuple(source.shape)}>"
    if hasattr(source, "num_tokens"):  # VideoTokens
        return f"<VideoTokens {source.num_frames} frames>"
    return str(source)


def _key(num_frames: int, depth: float | None, needle, tag: str) -> str:
    where = f"{num_frames}" if depth is None else f"{num_frames}@{_depth_key(depth)}"
    return f"{where}#{needle.id}#{tag}"


def _record(num_frames, depth, needle, tag, answer, prediction, seq_len, hay_count) -> dict:
    return {
        "key": _key(num_frames, depth, needle, tag),
        "frames": num_frames,
        "depth": depth,
        "needle": needle.id,
        "question": tag,
        "answer": answer,
        "prediction": prediction,
        "correct": is_correct(prediction, answer),
        "sequence_length": seq_len,
        "haystack_frames": hay_count,
    }


def _layout(num_frames: int, depth: float | None, needle, align: int) -> list[tuple]:
    if isinstance(needle, MultiHopNeedle):
        return multi_hop_layout(num_frames, len(needle.images), align)
    return single_hop_layout(num_frames, depth, align)


def _run_embedding(model, haystack, todo, store, take, cache, chunk_tokens, compression, progress):
    builder = SequenceBuilder(model)
    device = model.llm.model.embed_tokens.weight.device
    hay = haystack_tokens(model, haystack, take, cache=cache, progress=progress)[:take].to(device)
    images: dict[str, torch.Tensor] = {}
    max_len = 0
    bar = _progress(progress, len(todo), "NIAH")
    for num_frames, depth, needle in todo:
        paths = _needle_images(needle)
        for p in paths:
            if str(p) not in images:
                images[str(p)] = needle_tokens(model, p).to(device)
        tokens = [images[str(p)] for p in paths]
        layout = _layout(num_frames, depth, needle, 1)
        for tag, question, answer in _questions(needle):
            key = _key(num_frames, depth, needle, tag)
            if key in store.done:
                continue
            seq = builder.build(layout, hay, tokens, question, answer)
            preds = teacher_forced_predictions(
                model.llm, seq, compression=compression, chunk_tokens=chunk_tokens
            )
            text = builder.tokenizer.decode(preds)
            length = seq.prompt_len + len(seq.answer_ids)
            max_len = max(max_len, length)
            store.add(_record(num_frames, depth, needle, tag, answer, text, length, int(hay.shape[0])))
        bar.update(1)
    bar.close()
    return int(hay.shape[0]), max_len


def _run_pixel(model, haystack, todo, store, take, compression, progress):
    from .. import video as vid
    from ..inference.session import chat

    size = model.config.image_size
    per_clip = model.config.frames_per_clip
    if isinstance(haystack, np.ndarray) and haystack.ndim == 4:
        hay = haystack[:take]
    else:
        hay = vid.load_video(haystack, take, size=size).frames[:take]
    if hay.shape[1:3] != (size, size):
        from PIL import Image

        hay = np.stack(
            [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in hay]
        )
    count = hay.shape[0]
    images: dict[str, np.ndarray] = {}
    per_frame = model.config.projector.tokens_per_frame
    max_len = 0
    bar = _progress(progress, len(todo), "NIAH (pixel)")
    for num_frames, depth, needle in todo:
        paths = _needle_images(needle)
        for p in paths:
            if str(p) not in images:
                images[str(p)] = needle_frame(p, size)
        layout = _layout(num_frames, depth, needle, per_clip)
        parts = []
        for item in layout:
            if item[0] == "needle":
                parts.append(np.repeat(images[str(paths[item[1]])][None], NEEDLE_FRAMES, axis=0))
            elif item[2] > item[1]:
                parts.append(hay[np.arange(item[1], item[2]) % count])
        video = np.concatenate(parts)
        for tag, question, answer in _questions(needle):
            key = _key(num_frames, depth, needle, tag)
            if key in store.done:
                continue
            n_answer = len(model.tokenizer.encode(answer))
            text, _ = chat(
                model,
                video,
                question,
                generation={"max_new_tokens": n_answer, "do_sample": False},
                compression=compression,
            )
            length = len(video) * per_frame + len(model.tokenizer.encode(question)) + n_answer
            max_len = max(max_len, length)
            store.add(_record(num_frames, depth, needle, tag, answer, text, length, int(count)))
        bar.update(1)
    bar.close()
    return int(count), max_len


# ====================================================================== aggregation
def summarize(records, *, kind: str, frames: Sequence[int], depths: Sequence[float], needles) -> dict:
    """Accuracy per (frames, depth) and overall (single hop), or per frame count Score / Caption / QA (multi hop).

    Fractions in [0, 1]; cells without records are None. Multi-hop Score = (Σcaption + Σqa) / (2·N).
    """
    by_key = {r["key"]: r for r in records}
    out: dict = {"kind": kind, "frames": list(frames), "num_needles": len(needles)}
    if kind == "single-hop":
        grid: dict[str, dict[str, float | None]] = {}
        values = []
        for n in frames:
            row = {}
            for d in depths:
                hits = [by_key.get(_key(n, d, nd, "q")) for nd in needles]
                hits = [h["correct"] for h in hits if h is not None]
                row[_depth_key(d)] = sum(hits) / len(hits) if hits else None
                if hits:
                    values.append(row[_depth_key(d)])
            grid[str(n)] = row
        out.update(
            depths=[float(d) for d in depths],
            accuracy=grid,
            overall=sum(values) / len(values) if values else None,
        )
        return out
    per_frames = {}
    scores = []
    for n in frames:
        cap = [by_key.get(_key(n, None, nd, "caption")) for nd in needles]
        qa = [by_key.get(_key(n, None, nd, "qa")) for nd in needles]
        pairs = [(c["correct"], q["correct"] if q else None) for c, q in zip(cap, qa, strict=True) if c]
        if not pairs:
            per_frames[str(n)] = None
            continue
        n_cap = sum(c for c, _ in pairs)
        qas = [q for _, q in pairs if q is not None]
        row = {
            "score": (n_cap + sum(qas)) / (len(pairs) + len(qas)),
            "caption": n_cap / len(pairs),
            "qa": sum(qas) / len(qas) if qas else None,
            "both": sum(1 for c, q in pairs if c and q),
            "only_caption": sum(1 for c, q in pairs if c and not q),
            "only_qa": sum(1 for c, q in pairs if not c and q),
            "none": sum(1 for c, q in pairs if not c and not q),
            "count": len(pairs),
        }
        per_frames[str(n)] = row
        scores.append(row["score"])
    out.update(per_frames=per_frames, overall=sum(scores) / len(scores) if scores else None)
    return out


# ====================================================================== heatmap
_STOPS = ((0.0, (240, 73, 110)), (0.5, (235, 184, 57)), (1.0, (12, 215, 159)))  # red, amber, green


def score_color(value: float | None) -> tuple[int, int, int]:
    """Red (0) → amber (0.5) → green (1); grey for missing cells."""
    if value is None:
        return (200, 200, 200)
    v = min(1.0, max(0.0, float(value)))
    for (a, ca), (b, cb) in zip(_STOPS, _STOPS[1:], strict=False):
        if v <= b:
            t = (v - a) / (b - a)
            return tuple(int(round(x + (y - x) * t)) for x, y in zip(ca, cb, strict=True))
    return _STOPS[-1][1]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _frames_label(n: str) -> str:
    value = int(n)
    return f"{value / 1000:g}k" if value >= 1000 and value % 100 == 0 else str(value)


def heatmap_grid(result: dict) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(column labels, row labels, rows of values) of the figure: frames × depth, or frames × metric."""
    cols = [str(n) for n in result["frames"]]
    if result["kind"] == "single-hop":
        rows = [_depth_key(d) for d in result["depths"]]
        values = [[result["accuracy"][c][r] for c in cols] for r in rows]
        return cols, [f"{float(r) * 100:g}%" for r in rows], values
    metrics = ("score", "caption", "qa")
    values = [[(result["per_frames"].get(c) or {}).get(m) for c in cols] for m in metrics]
    return cols, ["Score", "Caption", "QA"], values


def _text(draw, xy, text: str, font, anchor: str = "la") -> None:
    """Draw ``text`` anchored at ``xy`` (h: l/m/r, v: t/m) — measured by hand, so bitmap fonts work too."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    x -= {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y -= {"a": 0, "t": top, "m": (top + bottom) / 2}[anchor[1]]
    draw.text((x, y), text, fill="black", font=font)


def draw_heatmap(result: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """PNG like the paper's NIAH figure: frames on x, depth (or metric) on y, red→green, numbers in cells."""
    from PIL import Image, ImageDraw

    cols, rows, values = heatmap_grid(result)
    cell_w, cell_h = 64, 40
    left, top, right, bottom = 90, 64, 110, 64
    font, small, big = _font(14), _font(12), _font(16)
    if title is None:
        overall = result.get("overall")
        score = "n/a" if overall is None else f"{100 * overall:.1f}%"
        title = f"{result['kind']} NIAH ({result.get('variant', 'embedding')}), overall {score}"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_w = probe.textbbox((0, 0), title, font=big)[2]
    width = max(left + cell_w * len(cols) + right, title_w + 40)
    height = top + cell_h * len(rows) + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    _text(draw, (width / 2, 20), title, big, "mm")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            x0, y0 = left + j * cell_w, top + i * cell_h
            draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + cell_h - 1], fill=score_color(v), outline="white")
            _text(
                draw, (x0 + cell_w / 2, y0 + cell_h / 2), "-" if v is None else f"{100 * v:.0f}", font, "mm"
            )
    grid_bottom = top + len(rows) * cell_h
    for j, c in enumerate(cols):
        _text(draw, (left + j * cell_w + cell_w / 2, grid_bottom + 6), _frames_label(c), small, "mt")
    _text(draw, (left + len(cols) * cell_w / 2, height - 20), "frames", font, "mm")
    for i, r in enumerate(rows):
        _text(draw, (left - 8, top + i * cell_h + cell_h / 2), r, small, "rm")
    _text(draw, (left - 8, top - 12), "depth" if result["kind"] == "single-hop" else "metric", font, "rm")
    # colour bar: 0 at the bottom, 100 at the top
    bx, bh = left + len(cols) * cell_w + 24, max(cell_h * len(rows), 60)
    for k in range(bh):
        draw.line([bx, top + k, bx + 16, top + k], fill=score_color(1 - k / max(bh - 1, 1)))
    for frac in (0.0, 0.5, 1.0):
        _text(draw, (bx + 22, top + (1 - frac) * (bh - 1)), f"{100 * frac:.0f}", small, "lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def format_result(result: dict) -> str:
    """A plain-text table of `run_niah`'s result."""
    cols, rows, values = heatmap_grid(result)
    lines = [f"{result['kind']} NIAH ({result.get('variant', 'embedding')}), accuracy in %"]
    head = "frames".rjust(9) + "".join(_frames_label(c).rjust(8) for c in cols)
    lines.append(head)
    for r, row in zip(rows, values, strict=True):
        lines.append(r.rjust(9) + "".join(("-" if v is None else f"{100 * v:.1f}").rjust(8) for v in row))
    overall = result.get("overall")
    lines.append(f"overall: {'n/a' if overall is None else f'{100 * overall:.2f}'}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


# ====================================================================== builders
def _options_text(options: Sequence[str]) -> str:
    return "\n".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options))


def _caption(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def _load_entries(entries, images: Path | None) -> list[dict]:
    if isinstance(entries, str | os.PathLike):
        source = Path(entries)
        entries = _read_list(source)
    else:
        source = Path("<entries>")
    out = []
    for i, e in enumerate(entries):
        if "image" not in e or "caption" not in e:
            raise NiahError(f"{source} entry {i} needs 'image' and 'caption'")
        out.append({**e, "_path": _image_path(images, e["image"], source)})
    if len({e["_path"] for e in out}) != len(out):
        raise NiahError(f"{source} lists an image more than once")
    return out


def _answer_letter(entry: dict) -> str:
    options, answer = list(entry["options"]), str(entry["answer"])
    if answer in options:
        return OPTION_LETTERS[options.index(answer)]
    if len(answer) == 1 and answer.upper() in OPTION_LETTERS[: len(options)]:
        return answer.upper()
    raise NiahError(f"answer {answer!r} of {entry['image']} is neither an option nor an option letter")


def build_single_hop(
    entries, out_file: str | os.PathLike, *, images: str | os.PathLike | None = None
) -> Path:
    """Single-hop records in the official format from ``{image, caption, question, options, answer}`` entries.

    question = "Find the frame of <caption>. <question>\\nOptions: (A) …\\n(B) …\\nOnly give the best option.
    Best option: (", answer = the letter. Image paths are written as given.
    """
    records = []
    for i, e in enumerate(_load_entries(entries, Path(images) if images else None)):
        if not all(k in e for k in ("question", "options", "answer")):
            raise NiahError(
                f"entry {i} ({e['image']}) needs 'question', 'options' and 'answer' for single hop"
            )
        question = (
            f"Find the frame of {_caption(e['caption'])}. {e['question']}\nOptions: "
            + _options_text(e["options"])
            + ANSWER_SUFFIX
        )
        records.append({"question": question, "answer": _answer_letter(e), "image": e["image"], "id": i})
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def render_instruction(image, text: str):
    """``image`` with ``text`` drawn in a white banner across its top (word-wrapped, size ∝ width)."""
    from PIL import ImageDraw

    img = _open_image(image).copy()
    w, h = img.size
    font = _font(max(12, w // 22))
    draw = ImageDraw.Draw(img)
    margin = max(4, w // 60)
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > w - 2 * margin:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 2)
    line_h = ascent + descent + 2
    box_h = min(h, line_h * len(lines) + 2 * margin)
    draw.rectangle([0, 0, w, box_h], fill="white")
    for k, text_line in enumerate(lines):
        draw.text((margin, margin + k * line_h), text_line, fill="black", font=font)
    return img


def build_multi_hop(
    entries,
    out_dir: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    num_samples: int = 100,
    hops: int = 3,
    distractors: int = 3,
    num_options: int = 4,
    seed: int = 0,
    file_name: str = "niah-multihop.json",
) -> Path:
    """A multi-hop needle set in the official format from captioned images; returns the JSON path.

    Per sample: a chain of ``hops`` instruction images and a final plain image, plus ``distractors``
    instruction images forming a dead-end chain (its last instruction names a caption that is not in the
    video). Each instruction image carries "Find the frame of <caption of the next image>" rendered onto it.
    ``question1`` = "Find the frame of <first chain image's caption>. Locate the final frame … captions …"
    with the final image's caption among ``num_options`` options (others drawn from the sample's images first);
    ``question2`` (only when the final image's entry has ``question``/``options``/``answer``) asks about the
    final frame. Images are shuffled per sample (the evaluator inserts them in list order), written under
    ``out_dir/multi/`` as ``niah_<sample>_<k>_<name>.jpg`` (k = 1-based chain position; distractors follow)
    and ``<name>.jpg`` for the final image; ``chain`` lists the true order as positions in ``images``.
    """
    rng = random.Random(seed)
    pool = _load_entries(entries, Path(images) if images else None)
    per_sample = hops + 1 + distractors + (1 if distractors else 0)  # + one absent dead-end target
    if hops < 1 or distractors < 0:
        raise NiahError("hops must be >= 1 and distractors >= 0")
    if len(pool) < max(per_sample, num_options):
        raise NiahError(
            f"{len(pool)} captioned images are too few: a sample with {hops} hops and {distractors} distractors "
            f"needs {per_sample} (and {num_options} distinct captions for the options)"
        )
    root = Path(out_dir)
    (root / "multi").mkdir(parents=True, exist_ok=True)
    with_qa = [e for e in pool if all(k in e for k in ("question", "options", "answer"))]
    records = []
    for s in range(num_samples):
        final = rng.choice(with_qa or pool)  # prefer finals that allow a question2
        rest = [e for e in pool if e is not final]
        rng.shuffle(rest)
        chain, dist = rest[:hops], rest[hops : hops + distractors]
        dead_end = rest[hops + distractors] if distractors else None
        files: list[tuple[str, str]] = []  # (role, relative path)
        for k, e in enumerate(chain):
            target = chain[k + 1] if k + 1 < len(chain) else final
            files.append(("chain", _write_instruction(root, s, k + 1, e, target["caption"])))
        for k, e in enumerate(dist):
            target = dist[k + 1] if k + 1 < len(dist) else dead_end
            files.append(("distractor", _write_instruction(root, s, hops + k + 1, e, target["caption"])))
        final_rel = f"multi/{Path(final['image']).stem}.jpg"
        if not (root / final_rel).exists():
            _open_image(final["_path"]).save(root / final_rel, quality=95)
        order = [*range(len(files)), "final"]
        rng.shuffle(order)
        names = [final_rel if i == "final" else files[i][1] for i in order]
        chain_order = [order.index(i) for i in range(hops)] + [order.index("final")]
        start = _caption(chain[0]["caption"])
        seen = [e["caption"] for e in [*chain, *dist]]  # captions that appear in the video come first
        rng.shuffle(seen)
        others = [e["caption"] for e in pool]
        rng.shuffle(others)
        options = []
        for c in seen + others:
            if _caption(c) != _caption(final["caption"]) and c not in options:
                options.append(c)
        options = options[: num_options - 1]
        if len(options) < num_options - 1:
            raise NiahError(f"not enough distinct captions for {num_options} options")
        slot = rng.randrange(num_options)
        options.insert(slot, final["caption"])
        record = {
            "images": names,
            "question1": f"Find the frame of {start}. "
            + MULTI_HOP_QUESTION1
            + _options_text(options)
            + ANSWER_SUFFIX,
            "answer1": OPTION_LETTERS[slot],
        }
        if all(k in final for k in ("question", "options", "answer")):
            record["question2"] = (
                f"Find the frame of {start}. "
                + MULTI_HOP_QUESTION2
                + f"{final['question']}\nOptions: "
                + _options_text(final["options"])
                + ANSWER_SUFFIX
            )
            record["answer2"] = _answer_letter(final)
        record["chain"] = chain_order
        records.append(record)
    out = root / file_name
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _write_instruction(root: Path, sample: int, k: int, entry: dict, target_caption: str) -> str:
    rel = f"multi/niah_{sample}_{k}_{Path(entry['image']).stem}.jpg"
    render_instruction(entry["_path"], f"Find the frame of {_caption(target_caption)}").save(
        root / rel, quality=95
    )
    return rel


__all__ = [
    "DEFAULT_DEPTHS",
    "DEFAULT_FRAMES",
    "POST",
    "PRE",
    "MultiHopNeedle",
    "NiahError",
    "NiahSequence",
    "SequenceBuilder",
    "SingleHopNeedle",
    "apply_yarn",
    "build_multi_hop",
    "build_single_hop",
    "draw_heatmap",
    "format_result",
    "haystack_tokens",
    "is_correct",
    "load_multi_hop",
    "load_needles",
    "load_single_hop",
    "multi_hop_layout",
    "needle_frame",
    "needle_tokens",
    "normalise_prediction",
    "render_instruction",
    "run_niah",
    "single_hop_layout",
    "summarize",
    "teacher_forced_predictions",
]
