"""Video-MME (`videomme`, `videomme_w_subtitle`), REFERENCE §11.2.

Prompts: the plain variant ends with "Answer with the option's letter from the given choices directly."; the
subtitle variant reads `<subtitles>/<videoID>.srt`, keeps the first `<font color="white" size=".72c">…</font>`
capture of each line, joins them with "\\n" and ends with "The best answer is:". Without an .srt the subtitle
variant starts with a bare newline (empty header and subtitles) and uses the plain instruction; an .srt without
tagged lines keeps the header but also uses the plain instruction.

Extraction: strip; delete every occurrence of the (partly accidentally concatenated) prefixes; more than 10 words
without any of A-D gives ""; otherwise the first uppercase A-D anywhere ("Best option: (C)" gives B).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Benchmark, BenchmarkError, BenchmarkItem, read_parquet_rows, relpath, resolve_video

INSTRUCTION = (
    "These are the frames of a video. Select the best answer to the following multiple-choice question based on "
    "the video. Respond with only the letter (A, B, C, or D) of the correct option."
)
SUBTITLE_INSTRUCTION = (
    "These are the frames and subtitles of a video. Select the best answer to the following multiple-choice "
    "question based on the video and the subtitles. Respond with only the letter (A, B, C, or D) of the correct "
    "option."
)
SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
POST_PROMPT = "Answer with the option's letter from the given choices directly."
SUBTITLE_POST_PROMPT = "The best answer is:"

# Two pairs are joined by missing commas in the original list; reproduced as such.
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)

_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_ABCD = re.compile(r"[ABCD]")

#: Extensions tried, in order, for `<videos>/<videoID>.<ext>` (then the same under `<videos>/data/`).
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv")


def read_srt_text(path: Path) -> str:
    """All subtitle text of a Video-MME .srt: first tagged capture per line, joined by newlines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"cannot read subtitle file {path}: {exc}") from exc
    texts = []
    for line in lines:
        found = _FONT.findall(line)
        if found:
            texts.append(found[0])
    return "\n".join(texts)


def videomme_prompt(
    question: str, options: list[str], subtitle_text: str | None = None, *, with_subtitles: bool
) -> str:
    """`subtitle_text` None means "no .srt file" (only meaningful for the subtitle variant)."""
    body = "Question: " + question + "\nOption:\n" + "\n".join(options)
    if not with_subtitles:
        return INSTRUCTION + "\n" + body + "\n" + POST_PROMPT
    header = "" if subtitle_text is None else SUBTITLE_HEADER
    subs = subtitle_text or ""
    instruction = SUBTITLE_INSTRUCTION if subs else INSTRUCTION
    return header + subs + "\n" + instruction + "\n" + body + "\n" + SUBTITLE_POST_PROMPT


def extract_letter(prediction: str) -> str:
    s = prediction.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not _ABCD.search(s):
        return ""
    m = _ABCD.search(s)
    return m.group(0) if m else ""


class VideoMME(Benchmark):
    name = "videomme"
    category_fields = ("duration", "domain", "sub_category", "task_type")

    def score(self, item: BenchmarkItem, prediction: str | None) -> float:
        if prediction is None:
            return 0.0
        return 1.0 if extract_letter(prediction.strip()) == item.answer else 0.0


class VideoMMESubtitles(VideoMME):
    name = "videomme_w_subtitle"


def load_videomme(
    annotations: Path, videos: Path | None, subtitles: Path | None, *, with_subtitles: bool
) -> VideoMME:
    path = annotations / "Video-MME" / "videomme" / "test-00000-of-00001.parquet"
    source = relpath(path, annotations)
    name = "videomme_w_subtitle" if with_subtitles else "videomme"
    srt_cache: dict[str, str | None] = {}
    items = []
    for index, rec in enumerate(read_parquet_rows(path)):
        vid = rec["videoID"]
        subtitle_text = None
        if with_subtitles:
            if vid not in srt_cache:
                srt = Path(subtitles) / f"{vid}.srt" if subtitles is not None else None
                srt_cache[vid] = read_srt_text(srt) if srt is not None and srt.is_file() else None
            subtitle_text = srt_cache[vid]
        candidates = [f"{vid}{ext}" for ext in VIDEO_EXTENSIONS] + [
            f"data/{vid}{ext}" for ext in VIDEO_EXTENSIONS
        ]
        options = list(rec["options"])
        items.append(
            BenchmarkItem(
                benchmark=name,
                id=f"{source}#{index}",
                source=source,
                index=index,
                task=name,
                prompt=videomme_prompt(
                    rec["question"], options, subtitle_text, with_subtitles=with_subtitles
                ),
                answer=rec["answer"],
                video=resolve_video(videos, candidates),
                media={"video_read_type": "decord"},
                max_new_tokens=16,
                options=tuple(options),
                category={k: rec[k] for k in ("duration", "domain", "sub_category", "task_type")},
                record=rec,
            )
        )
    cls = VideoMMESubtitles if with_subtitles else VideoMME
    return cls(items, annotations=annotations, videos=videos, subtitles=subtitles)
