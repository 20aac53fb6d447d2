"""On-disk cache of encoded videos (`VideoTokens`), so a second question about a file skips decode + encode.

Key = hash(video content, model identity, sampling/resolution settings). Entries are safetensors files
written atomically (temp file + rename); the key is stored inside each entry and checked on read, so a
corrupt, truncated or foreign file is detected, deleted and recomputed — never trusted. The cache keeps
its total size under a limit by evicting the least recently used entries (access refreshes mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from .tokens import VideoTokens

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 * 1024**3
_CHUNK = 4 * 1024 * 1024


def default_cache_dir() -> Path:
    base = os.environ.get("VIDEOCHAT_FLASH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "videochat-flash"
    )
    return Path(base) / "tokens"


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def hash_file(path: str | os.PathLike) -> str:
    """Content hash of a file, read in chunks (bounded memory for any size)."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def make_key(video_hash: str, model_id: str, settings: dict) -> str:
    blob = json.dumps(
        {"video": video_hash, "model": model_id, "settings": settings}, sort_keys=True, default=str
    )
    return hash_bytes(blob.encode())


class TokenCache:
    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> VideoTokens | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tokens, meta = VideoTokens.load(path)
            if meta.get("cache_key") != key:
                raise ValueError("entry belongs to another key")
        except Exception as exc:  # any unreadable entry is dropped and recomputed
            log.warning(
                "dropping corrupt cache entry %s: %s",
                path.name,
                str(exc).splitlines()[0] if str(exc) else exc,
            )
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        os.utime(path)  # mark as recently used
        self.hits += 1
        return tokens

    def put(self, key: str, tokens: VideoTokens) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.root)
        os.close(fd)
        try:
            tokens.save(tmp, extra={"cache_key": key})
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict()

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob("*.safetensors") if not p.name.startswith(".tmp-")]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self) -> list[Path]:
        """Delete least recently used entries until the cache fits ``max_bytes``."""
        entries = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        removed = []
        while entries and total > self.max_bytes:
            victim = entries.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)
            removed.append(victim)
        return removed

    def clear(self) -> None:
        for p in self.entries():
            p.unlink(missing_ok=True)
