"""`VideoTokens`: an encoded video — compressed clip tokens plus what was sampled and when.

Produced once per video (`VideoChatFlash.encode_video`) and reused for every question and chat turn; it is
also what the on-disk cache stores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

FORMAT_VERSION = 1


@dataclass
class VideoTokens:
    tokens: torch.Tensor  # [num_frames * tokens_per_frame, D], visual embeddings in the model's order
    timestamps: list[float]  # seconds, one per sampled frame
    indices: list[int]  # source frame numbers, one per sampled frame
    duration: float  # seconds covered (the clip's duration when a window was given)
    fps: float
    time_message: str  # REFERENCE §4.3 string (leading newline, trailing space)
    frames_per_clip: int = 4
    sampling: dict = field(default_factory=dict)  # how frames were chosen; part of the cache key
    model_id: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. "kept 128 of 256 clips (context budget)"

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)

    @property
    def num_clips(self) -> int:
        return self.num_frames // self.frames_per_clip

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def tokens_per_clip(self) -> int:
        return self.num_tokens // max(self.num_clips, 1)

    def select_clips(self, clip_ids: list[int]) -> VideoTokens:
        """A VideoTokens holding only the given clips (in the given order); the time message is rebuilt."""
        from ..video import time_message

        per_clip, per_tokens = self.frames_per_clip, self.tokens_per_clip
        frames = [c * per_clip + k for c in clip_ids for k in range(per_clip)]
        token_rows = torch.cat([torch.arange(c * per_tokens, (c + 1) * per_tokens) for c in clip_ids])
        return replace(
            self,
            tokens=self.tokens[token_rows],
            timestamps=[self.timestamps[f] for f in frames],
            indices=[self.indices[f] for f in frames],
            time_message=time_message(self.duration, len(frames)),
            notes=list(self.notes),
        )

    def subsample_clips(self, max_clips: int) -> VideoTokens:
        """Keep at most ``max_clips`` clips, evenly spread over the video (used when context runs out)."""
        if self.num_clips <= max_clips:
            return self
        chosen = torch.linspace(0, self.num_clips - 1, max_clips).round().long().unique().tolist()
        out = self.select_clips(chosen)
        out.notes.append(
            f"kept {len(chosen)} of {self.num_clips} clips, evenly spaced, to fit the context budget"
        )
        return out

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict:
        meta = asdict(replace(self, tokens=torch.empty(0)))
        meta.pop("tokens")
        meta["format_version"] = FORMAT_VERSION
        return meta

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        meta = {"videotokens": json.dumps(self.metadata()), **(extra or {})}
        save_file({"tokens": self.tokens.detach().cpu().contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple[VideoTokens, dict]:
        """Read a saved VideoTokens and the extra metadata stored with it. Raises ValueError if malformed."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tokens = f.get_tensor("tokens")
        info = json.loads(meta.pop("videotokens"))
        if info.pop("format_version", None) != FORMAT_VERSION:
            raise ValueError(f"{path}: unknown VideoTokens format")
        out = cls(tokens=tokens, **info)
        if out.num_frames % out.frames_per_clip or out.num_tokens % max(out.num_clips, 1):
            raise ValueError(f"{path}: token and frame counts disagree")
        return out, meta
