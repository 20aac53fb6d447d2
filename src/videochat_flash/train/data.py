"""Training data: annotations, data mixtures, prompts with label masks, lazy media loading, collation.

* Annotation files are LLaVA-style records (REFERENCE §9.2) in a ``.json`` list or a ``.jsonl`` file.
  `read_annotations` keeps each record's file and line so every later error can name them.
* A data mixture YAML (§9.1) lists annotation files with a sampling strategy and a media root.
* `check_annotations` validates records before training and returns ``file:line: problem`` strings.
* `build_example` turns one record's conversation into input ids and labels (§5.2 training prompt, §5.4 masks)
  for the ``qwen_2`` and ``plain`` templates.
* `SupervisedDataset` is map-style and lazy: media are decoded in ``__getitem__``. A missing or undecodable media
  file is logged, counted and replaced by the next record (so batch shapes and ranks stay in step); the skips
  travel with the batch to the trainer, which reports them.
* `collate_samples` produces a `SampleBatch` (a ``list[MultimodalSample]`` with a ``skipped`` attribute).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..errors import ConfigError, VideoChatFlashError
from ..inference.prompt import (
    ASSISTANT_ROLE,
    IGNORE_INDEX,
    IM_END,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    SYSTEM_PROMPT,
    USER_ROLE,
    TextTokenizer,
    render_chat,
)

log = logging.getLogger(__name__)

TEMPLATES = ("qwen_2", "plain")
USER, ASSISTANT = "user", "assistant"
ROLE_NAMES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}
NOISY_MARKER = "QA_GT_caption_based_noisy"  # deleted from prompts by the original (§5.2)
TIME_MESSAGE_STYLES = ("short", "timestamps")


class DataError(VideoChatFlashError):
    """Malformed annotations, a bad data mixture, or media that cannot be found at all."""


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One annotation record as read from disk, with where it came from."""

    data: Any
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_annotations(path: str | Path) -> list[Record]:
    """All records of a ``.json`` (a list) or ``.jsonl`` file, each tagged with its file and 1-based line.

    Raises DataError naming file and line when the file is not valid JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"annotation file {path} cannot be read: {exc}") from None
    if path.suffix == ".jsonl":
        return _read_jsonl(text, str(path))
    return _read_json_list(text, str(path))


def _read_jsonl(text: str, file: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(json.loads(line), file, number))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return records


def _read_json_list(text: str, file: str) -> list[Record]:
    """Parse a JSON list element by element so that each record knows the line it starts on."""
    decoder = json.JSONDecoder()
    records: list[Record] = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(pos: int, msg: str) -> DataError:
        return DataError(f"{file}:{line_of(pos)}: invalid JSON: {msg}")

    pos = skip_ws(0)
    if pos >= len(text) or text[pos] != "[":
        raise fail(pos, "an annotation .json file must hold a list of records")
    pos = skip_ws(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return records
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        records.append(Record(value, file, line_of(pos)))
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if skip_ws(pos + 1) != len(text):
                raise fail(skip_ws(pos + 1), "extra data after the list")
            return records
        raise fail(pos, "expected ',' or ']' after a record")


# ------------------------------------------------------------------------------------ parsed records
@dataclass(frozen=True)
class Conversation:
    """A validated annotation: (role, text) turns starting with the user, plus its media."""

    turns: tuple[tuple[str, str], ...]
    video: str | None = None
    images: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None
    video_read_type: str | None = None

    @property
    def modality(self) -> str:
        if self.video is not None:
            return "video"
        return "image" if self.images else "text"


def parse_record(data: Any) -> Conversation:
    """Validate one record and normalise it. Raises DataError with the problem (without the location)."""
    if not isinstance(data, dict):
        raise DataError(f"record must be a JSON object, got {type(data).__name__}")
    video = data.get("video")
    image = data.get("image")
    if video is not None and image is not None:
        raise DataError("record has both 'video' and 'image'")
    if video is not None and (not isinstance(video, str) or not video):
        raise DataError("'video' must be a non-empty string")
    images: tuple[str, ...] = ()
    if image is not None:
        images = (image,) if isinstance(image, str) else tuple(image) if isinstance(image, list) else ()
        if not images or not all(isinstance(x, str) and x for x in images):
            raise DataError("'image' must be a path or a non-empty list of paths")
    start, end = data.get("start"), data.get("end")
    if (start is None) != (end is None):
        raise DataError("'start' and 'end' must be given together")
    if start is not None:
        if video is None:
            raise DataError("'start'/'end' are only allowed with 'video'")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end)):
            raise DataError(f"'start'/'end' must be numbers (seconds), got {start!r}/{end!r}")
        if not 0 <= start < end:
            raise DataError(f"clip 'start' = {start} must be >= 0 and < 'end' = {end}")
    turns = _parse_turns(data.get("conversations"))
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    has_media = video is not None or bool(images)
    if has_media and placeholders != 1:
        raise DataError(
            f"a record with media needs exactly one {IMAGE_PLACEHOLDER} placeholder, found {placeholders}"
        )
    if not has_media and placeholders:
        raise DataError(f"{IMAGE_PLACEHOLDER} placeholder in a record without 'video' or 'image'")
    if any(IMAGE_PLACEHOLDER in text for role, text in turns if role == ASSISTANT):
        raise DataError(f"the {IMAGE_PLACEHOLDER} placeholder must be in a human turn")
    read_type = data.get("video_read_type")
    return Conversation(
        turns=turns,
        video=video,
        images=images,
        start=None if start is None else float(start),
        end=None if end is None else float(end),
        video_read_type=read_type if isinstance(read_type, str) else None,
    )


def _parse_turns(conversations: Any) -> tuple[tuple[str, str], ...]:
    if conversations is None:
        raise DataError("missing 'conversations'")
    if not isinstance(conversations, list) or not conversations:
        raise DataError("'conversations' must be a non-empty list of turns")
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise DataError(f"turn {k} must be an object with from/value (or role/content)")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if role not in ROLE_NAMES:
            raise DataError(f"turn {k} has role {role!r}; expected human/gpt (or user/assistant)")
        if not isinstance(text, str):
            raise DataError(f"turn {k} has no text ('value' or 'content' must be a string)")
        turns.append((ROLE_NAMES[role], text))
    if turns[0][0] == ASSISTANT:  # the original drops a leading gpt turn
        turns = turns[1:]
    if not turns:
        raise DataError("'conversations' holds no human turn")
    for k, (role, _) in enumerate(turns):
        expected = USER if k % 2 == 0 else ASSISTANT
        if role != expected:
            raise DataError(f"turns must alternate human, gpt; turn {k} (after any leading gpt) is {role!r}")
    if len(turns) < 2:
        raise DataError("'conversations' has no gpt answer to learn from")
    return tuple(turns)


def check_record(conv: Conversation, template: str) -> None:
    """Template-specific checks (the plain template takes exactly one human + one gpt turn with media)."""
    if template == "plain":
        if len(conv.turns) != 2:
            raise DataError(f"the plain template needs exactly 2 turns (human, gpt), found {len(conv.turns)}")
        if conv.modality == "text":
            raise DataError("the plain template needs a record with 'video' or 'image'")


def check_annotations(
    paths: Iterable[str | Path], template: str | None = None, records: Sequence[Record] | None = None
) -> list[str]:
    """Validate annotation files; returns one ``file:line: problem`` string per bad record (empty if all good)."""
    errors: list[str] = []
    for path in paths:
        try:
            found = read_annotations(path)
        except DataError as exc:
            errors.append(str(exc))
            continue
        errors.extend(_check_records(found, template))
    if records is not None:
        errors.extend(_check_records(records, template))
    return errors


def _check_records(records: Iterable[Record], template: str | None) -> list[str]:
    errors = []
    for record in records:
        try:
            conv = parse_record(record.data)
            if template is not None:
                check_record(conv, template)
        except DataError as exc:
            errors.append(f"{record.where}: {exc}")
    return errors


# ------------------------------------------------------------------------------------------ mixtures
@dataclass(frozen=True)
class DatasetEntry:
    """One ``datasets:`` entry of a data mixture YAML (§9.1)."""

    json_path: str
    sampling_strategy: str = "all"
    data_root: str = ""
    video_read_type: str | None = None
    media_type: str | None = None


@dataclass(frozen=True)
class MixtureItem:
    """A selected record with the media root and reader of its dataset."""

    record: Record
    data_root: str
    video_read_type: str | None


ENTRY_KEYS = {"json_path", "sampling_strategy", "data_root", "video_read_type", "media_type"}


def read_mixture(path: str | Path) -> list[DatasetEntry]:
    """Entries of a data mixture YAML. Relative ``json_path``/``data_root`` are taken from the YAML's folder."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(f"data mixture file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"data mixture file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise DataError(f"data mixture file {path} needs a top-level 'datasets:' list")
    entries = []
    for k, raw in enumerate(doc["datasets"]):
        if not isinstance(raw, dict) or "json_path" not in raw:
            raise DataError(f"{path}: datasets[{k}] needs a 'json_path'")
        unknown = set(raw) - ENTRY_KEYS
        if unknown:
            raise DataError(f"{path}: datasets[{k}] has unknown keys {sorted(unknown)}")
        strategy = str(raw.get("sampling_strategy", "all"))
        parse_sampling_strategy(strategy)  # fail early on a bad strategy
        entries.append(
            DatasetEntry(
                json_path=_resolve(raw["json_path"], path.parent),
                sampling_strategy=strategy,
                data_root=_resolve(raw.get("data_root") or "", path.parent) if raw.get("data_root") else "",
                video_read_type=raw.get("video_read_type"),
                media_type=raw.get("media_type"),
            )
        )
    return entries


def _resolve(value: str, base: Path) -> str:
    value = os.path.expandvars(os.path.expanduser(str(value)))
    if "://" in value or os.path.isabs(value):
        return value
    return str(base / value)


def parse_sampling_strategy(strategy: str) -> tuple[str, float | int | None, bool]:
    """(kind, amount, is_percent) for 'all', 'first:N', 'first:P%', 'end:N', 'first2:N' ... 'first4:N'."""
    if strategy == "all":
        return "all", None, False
    kind, sep, amount = strategy.partition(":")
    if not sep or kind not in ("first", "end", "first2", "first3", "first4", "random"):
        raise DataError(
            f"unknown sampling_strategy {strategy!r} (all, first:N, first:P%, end:N, first2:N..first4:N)"
        )
    if kind == "random":
        raise DataError(
            f"sampling_strategy {strategy!r}: random sampling is not supported (as in the original)"
        )
    percent = amount.endswith("%")
    try:
        value = float(amount[:-1]) if percent else int(amount)
    except ValueError:
        raise DataError(f"sampling_strategy {strategy!r}: {amount!r} is not a number") from None
    if percent and kind != "first":
        raise DataError(f"sampling_strategy {strategy!r}: percentages are only allowed with 'first'")
    if value < 0:
        raise DataError(f"sampling_strategy {strategy!r}: the amount must be >= 0")
    return kind, value, percent


def apply_sampling_strategy(records: Sequence[Record], strategy: str) -> list[Record]:
    kind, amount, percent = parse_sampling_strategy(strategy)
    if kind == "all":
        return list(records)
    n = math.ceil(amount * len(records) / 100) if percent else int(amount)
    if kind == "first":
        return list(records[:n])
    if kind == "end":
        return list(records[-n:]) if n else []
    block = int(kind[-1]) - 1  # first2 = the second block of N
    return list(records[block * n : (block + 1) * n])


def load_mixture(entries: Sequence[DatasetEntry]) -> list[MixtureItem]:
    """All selected records of all entries, concatenated in order."""
    items = []
    for entry in entries:
        records = apply_sampling_strategy(read_annotations(entry.json_path), entry.sampling_strategy)
        items.extend(MixtureItem(r, entry.data_root, entry.video_read_type) for r in records)
    return items


# ------------------------------------------------------------------------------ prompts and labels
@dataclass(frozen=True)
class Example:
    """Token ids and labels of one conversation (the placeholder is −200 in ids and −100 in labels)."""

    input_ids: list[int]
    labels: list[int]


def training_turns(conv: Conversation, time_message: str | None) -> list[tuple[str, str]]:
    """The turns after the original's `preprocess_multimodal` (§5.2).

    The turn holding the placeholder becomes ``"<image>\\n" + rest.strip()``; for videos the placeholder is then
    followed by the time message (right-stripped) and a space, giving ``"<image>\\n{msg} \\n{question}"``.
    The marker ``QA_GT_caption_based_noisy`` is deleted everywhere.
    """
    out = []
    for role, text in conv.turns:
        if IMAGE_PLACEHOLDER in text:
            text = IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()
            if conv.modality == "video" and time_message:
                text = text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER + time_message.rstrip() + " ")
        out.append((role, text.replace(NOISY_MARKER, "")))
    return out


def label_qwen2(turns: Sequence[tuple[str, str]], tokenizer: TextTokenizer) -> Example:
    """``qwen_2`` ids and labels (§5.4).

    System and user turns are masked; each assistant turn is a target as a whole (header and trailing
    ``<|im_end|>\\n`` included). Then every "\\n", ``<|im_start|>`` and ``<|im_end|>`` id becomes a target
    everywhere (the original's behaviour). The placeholder is −200 in the ids and −100 in the labels.
    """
    ids: list[int] = []
    labels: list[int] = []
    system = tokenizer.encode_with_image(render_chat([], system=SYSTEM_PROMPT))
    ids += system
    labels += [IGNORE_INDEX] * len(system)
    for role, text in turns:
        header = ASSISTANT_ROLE if role == ASSISTANT else USER_ROLE
        piece = tokenizer.encode_with_image(header + "\n" + text + IM_END + "\n")
        ids += piece
        labels += list(piece) if role == ASSISTANT else [IGNORE_INDEX] * len(piece)
    always = set(_always_supervised(tokenizer))
    labels = [i if i in always else lab for i, lab in zip(ids, labels, strict=True)]
    labels = [IGNORE_INDEX if i == IMAGE_TOKEN_INDEX else lab for i, lab in zip(ids, labels, strict=True)]
    return Example(ids, labels)


def _always_supervised(tokenizer: TextTokenizer) -> tuple[int, ...]:
    newline = tokenizer.encode("\n")
    if len(newline) != 1:
        raise DataError("the tokenizer does not encode '\\n' as a single token")
    return newline[0], tokenizer.im_start_id, tokenizer.eos_token_id


def label_plain(turns: Sequence[tuple[str, str]], tokenizer: TextTokenizer) -> Example:
    """Stage-1 ``plain`` template: ``<image>`` + caption + "\\n"; the human text is dropped and the image masked."""
    caption = turns[1][1]
    text_ids = tokenizer.encode(caption + "\n")
    return Example([IMAGE_TOKEN_INDEX, *text_ids], [IGNORE_INDEX, *text_ids])


def build_example(
    conv: Conversation, tokenizer: TextTokenizer, template: str, time_message: str | None = None
) -> Example:
    if template == "qwen_2":
        return label_qwen2(training_turns(conv, time_message), tokenizer)
    if template == "plain":
        check_record(conv, template)
        return label_plain(conv.turns, tokenizer)
    raise ConfigError(f"unknown template {template!r} (supported: {', '.join(TEMPLATES)})")


# --------------------------------------------------------------------------------------- media
@dataclass(frozen=True)
class VideoSampling:
    """Per-stage frame sampling (§4.4): ``frames_lowbound``..``frames_upbound``, clip length, time message."""

    frames_upbound: int = 8
    frames_lowbound: int = 1
    sample_type: str = "dynamic_fps1"
    local_num_frames: int = 4
    time_msg: str | None = "short"
    decode_size: int | None = None  # optional resize while decoding (the processor resizes to S x S anyway)


class MediaError(Exception):
    """A media file of one record is missing or cannot be decoded (the record is skipped)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def media_path(root: str, name: str) -> str:
    return os.path.join(root, name) if root else name


def load_video_frames(
    path: str, conv: Conversation, sampling: VideoSampling, seed: int | None = None
) -> tuple[np.ndarray, str | None]:
    """Decode the sampled frames of a video (or a clip of it) and its time message, via `videochat_flash.video`.

    ``seed`` makes the ``rand`` sample type reproducible (the dataset passes the record index).
    """
    from .. import video as video_layer
    from ..video.errors import VideoDecodeError

    if "://" not in path and not os.path.exists(path):
        raise MediaError(path, "file not found")
    kwargs: dict[str, Any] = dict(
        min_frames=sampling.frames_lowbound,
        local_num_frames=sampling.local_num_frames,
        sample=sampling.sample_type,
        time_message_style=sampling.time_msg,
    )
    if conv.start is not None:
        # Annotated clips follow the original training loader's clip reader (§4.4), not the inference rules.
        kwargs.update(start=conv.start, end=conv.end, clip_rule="training")
    if sampling.decode_size:
        kwargs["size"] = sampling.decode_size
    if sampling.sample_type == "rand" and seed is not None:
        kwargs["seed"] = seed
    try:
        result = video_layer.load_video(path, sampling.frames_upbound, **kwargs)
    except VideoDecodeError as exc:
        raise MediaError(path, f"cannot decode video: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise MediaError(path, f"cannot decode video: {type(exc).__name__}: {exc}") from None
    frames = np.asarray(result.frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise MediaError(path, f"decoder returned no frames (shape {frames.shape})")
    return pad_to_clips(frames, sampling.local_num_frames), result.time_message


def pad_to_clips(frames: np.ndarray, per_clip: int) -> np.ndarray:
    """Repeat the last frame so the count is a multiple of the clip length (the encoder needs whole clips)."""
    missing = -len(frames) % per_clip
    if missing:
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
    return frames


def load_image(path: str):
    from PIL import Image

    if "://" not in path and not os.path.exists(path):
        raise MediaError(path, "file not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise MediaError(path, f"cannot decode image: {exc}") from None


class _ConfigOnly:
    """Calls the model class's preprocessing methods (which read only ``self.config``) without the weights."""

    def __init__(self, model_class: type, config):
        self.model_class = model_class
        self.config = config

    def preprocess_video(self, frames):
        return self.model_class.preprocess_video(self, frames)

    def preprocess_image(self, image):
        return self.model_class.preprocess_image(self, image)


class MediaProcessor:
    """Turns decoded media into pixel tensors with the model's own preprocessing (REFERENCE §3).

    ``video(frames) -> [T,3,S,S]``; ``image(pil) -> (pixels [1+P,3,S,S], grid)`` with the model's
    ``image_aspect_ratio``; ``images(list) -> (pixels [N,3,S,S], None)``: several images in one sample are each
    padded to a square and become one tile (§3.3 step 8), their 64-token blocks concatenated in order.
    """

    def __init__(self, preprocess_video: Callable, preprocess_image: Callable, image_size: int):
        self.preprocess_video = preprocess_video
        self.preprocess_image = preprocess_image
        self.image_size = image_size

    @classmethod
    def for_model(cls, model) -> MediaProcessor:
        """The model's preprocessing, bound to a stand-in that carries only the config (cheap to send to workers)."""
        prep = _ConfigOnly(type(model), model.config)
        return cls(prep.preprocess_video, prep.preprocess_image, model.config.image_size)

    def video(self, frames: np.ndarray) -> torch.Tensor:
        return self.preprocess_video(frames)

    def image(self, image) -> tuple[torch.Tensor, tuple[int, int] | None]:
        pixels, grid = self.preprocess_image(image)
        return pixels, None if grid is None else tuple(grid)

    def images(self, images: Sequence) -> tuple[torch.Tensor, None]:
        from ..model.preprocess import pad_to_square, preprocess_frames

        tiles = [preprocess_frames(np.asarray(pad_to_square(img))[None], self.image_size) for img in images]
        return torch.cat(tiles), None


# ------------------------------------------------------------------------------------- dataset
@dataclass
class Skip:
    """A record that was skipped: where it is, which media file, and why."""

    where: str
    path: str
    reason: str


@dataclass
class LoadedSample:
    """What ``__getitem__`` returns: the sample plus the records skipped on the way to it."""

    sample: Any  # MultimodalSample
    skipped: list[Skip] = field(default_factory=list)


def _sample_class():
    from ..model.videochat import MultimodalSample

    return MultimodalSample


class SupervisedDataset(torch.utils.data.Dataset):
    """Map-style, lazy dataset of conversations with their media.

    Records are validated when the dataset is built (`check_annotations` semantics); media are decoded in
    ``__getitem__``. A record whose media cannot be loaded is logged and replaced by the next one
    (deterministically), and the skip is returned with the sample.
    """

    max_attempts = 16

    def __init__(
        self,
        items: Sequence[MixtureItem],
        tokenizer: TextTokenizer | None,
        template: str = "qwen_2",
        sampling: VideoSampling | None = None,
        processor: MediaProcessor | None = None,
        max_length: int | None = None,
        sample_class: type | None = None,
    ):
        if template not in TEMPLATES:
            raise ConfigError(f"unknown template {template!r} (supported: {', '.join(TEMPLATES)})")
        errors = _check_records((it.record for it in items), template)
        if errors:
            raise DataError(_format_errors(errors))
        self.items = list(items)
        self.convs = [parse_record(it.record.data) for it in self.items]
        self.tokenizer = tokenizer
        self.template = template
        self.sampling = sampling or VideoSampling()
        self.processor = processor
        self.max_length = max_length
        self.sample_class = sample_class

    def __len__(self) -> int:
        return len(self.items)

    @property
    def modalities(self) -> list[str]:
        return [c.modality for c in self.convs]

    def __getitem__(self, index: int) -> LoadedSample:
        skipped: list[Skip] = []
        for attempt in range(self.max_attempts):
            k = (index + attempt) % len(self.items)
            try:
                return LoadedSample(self.load(k), skipped)
            except MediaError as exc:
                item = self.items[k]
                log.warning("skipping %s: media %s: %s", item.record.where, exc.path, exc.reason)
                skipped.append(Skip(item.record.where, exc.path, exc.reason))
        raise DataError(
            f"{self.max_attempts} records in a row from {self.items[index].record.where} have unloadable media "
            f"(last: {skipped[-1].path}: {skipped[-1].reason})"
        )

    def load(self, k: int):
        """Build the sample of record ``k`` (raises MediaError when its media cannot be loaded)."""
        conv, item = self.convs[k], self.items[k]
        pixels, grid, time_message = None, None, None
        if conv.modality == "video":
            path = media_path(item.data_root, conv.video)
            frames, time_message = load_video_frames(path, conv, self.sampling, seed=k)
            pixels = self._processor().video(frames)
        elif conv.modality == "image":
            images = [load_image(media_path(item.data_root, name)) for name in conv.images]
            proc = self._processor()
            pixels, grid = proc.image(images[0]) if len(images) == 1 else proc.images(images)
        example = build_example(conv, self._tokenizer(), self.template, time_message)
        ids, labels = example.input_ids, example.labels
        if self.max_length is not None:  # §9.0: truncate before visual expansion
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        cls = self.sample_class or _sample_class()
        return cls(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            pixels=pixels,
            modality=conv.modality,
            image_grid=grid,
        )

    def _tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise DataError("the dataset has no tokenizer")
        return self.tokenizer

    def _processor(self) -> MediaProcessor:
        if self.processor is None:
            raise DataError("the dataset has no media processor")
        return self.processor


def _format_errors(errors: Sequence[str], limit: int = 20) -> str:
    head = "; ".join(errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{len(errors)} malformed annotation record(s): {head}{more}"


def dataset_from_mixture(path: str | Path, **kwargs) -> SupervisedDataset:
    return SupervisedDataset(load_mixture(read_mixture(path)), **kwargs)


# ------------------------------------------------------------------------------------- collation
class SampleBatch(list):
    """A ``list[MultimodalSample]`` that also carries the records skipped while building it."""

    def __init__(self, samples: Iterable = (), skipped: Iterable[Skip] = ()):
        super().__init__(samples)
        self.skipped = list(skipped)

    @property
    def num_tokens(self) -> int:
        return sum(int(s.input_ids.numel()) for s in self)

    @property
    def num_supervised(self) -> int:
        return sum(int((s.labels != IGNORE_INDEX).sum()) for s in self)


def collate_samples(items: Sequence[LoadedSample]) -> SampleBatch:
    return SampleBatch((it.sample for it in items), (s for it in items for s in it.skipped))


# --------------------------------------------------------------------------------------- sampling
class MicroBatchSampler(torch.utils.data.Sampler):
    """The micro-batches of one rank, in a fixed order that depends only on the seed, resumable anywhere.

    Each epoch's order is a seeded permutation of all samples (with ``group_by_modality``: the samples of each
    modality are shuffled and cut into global-batch-sized chunks, whose order is then shuffled — every optimizer
    step then sees one modality, like the original's modality-grouped sampler). Optimizer step ``s`` of an
    epoch uses samples ``[s·G, (s+1)·G)`` with ``G = micro_batch × accumulation × world_size`` (the tail is
    dropped); micro-batch ``m`` of rank ``r`` takes the slice ``(m·world_size + r)·micro_batch`` of it. One
    process with accumulation ``k·a`` therefore sees exactly the micro-batches that ``k`` processes with
    accumulation ``a`` see together. ``start`` is the number of micro-batches this rank has consumed already.
    """

    def __init__(
        self,
        num_samples: int,
        micro_batch: int,
        accumulation: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epochs: int = 1,
        shuffle: bool = True,
        modalities: Sequence[str] | None = None,
        group_by_modality: bool = False,
        start: int = 0,
    ):
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epochs = epochs
        self.shuffle = shuffle
        self.modalities = list(modalities) if modalities is not None else None
        self.group_by_modality = group_by_modality and self.modalities is not None
        self.start = start
        self.global_batch = micro_batch * accumulation * world_size
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the data has {num_samples} samples, fewer than one global batch of {self.global_batch}"
            )
        self._order_cache: tuple[int, list[int]] | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def total_micro_batches(self) -> int:
        return self.total_steps * self.accumulation

    def __len__(self) -> int:
        return max(0, self.total_micro_batches - self.start)

    def __iter__(self):
        for m in range(self.start, self.total_micro_batches):
            yield self.micro_batch_indices(m)

    def micro_batch_indices(self, m: int) -> list[int]:
        step, micro = divmod(m, self.accumulation)
        epoch, s = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        offset = s * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch
        return order[offset : offset + self.micro_batch]

    def epoch_order(self, epoch: int) -> list[int]:
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if not self.shuffle:
            order = list(range(self.num_samples))
        elif self.group_by_modality:
            order = self._grouped_order(gen)
        else:
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        self._order_cache = (epoch, order)
        return order

    def _grouped_order(self, gen: torch.Generator) -> list[int]:
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(self.modalities):
            groups.setdefault(m, []).append(i)
        chunks, rest = [], []
        for name in sorted(groups):
            idx = groups[name]
            perm = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
            full = len(perm) // self.global_batch * self.global_batch
            chunks += [perm[k : k + self.global_batch] for k in range(0, full, self.global_batch)]
            rest += perm[full:]
        if rest:
            rest = [rest[j] for j in torch.randperm(len(rest), generator=gen).tolist()]
            chunks += [rest[k : k + self.global_batch] for k in range(0, len(rest), self.global_batch)]
        # Full chunks first in shuffled order; the mixed remainder (possibly short) goes last and is dropped.
        full_chunks = [c for c in chunks if len(c) == self.global_batch]
        short = [c for c in chunks if len(c) < self.global_batch]
        order = [full_chunks[j] for j in torch.randperm(len(full_chunks), generator=gen).tolist()]
        return [i for c in order + short for i in c]
