"""Prompt format and tokenization (REFERENCE §5).

The `qwen_2` conversation template (ChatML), the first-turn user text with the time message, and the
tokenization that turns the single ``<image>`` placeholder into the id −200 between separately tokenised
text pieces. Training (label masking) and inference both build prompts here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"

SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
USER_ROLE = IM_START + "user"
ASSISTANT_ROLE = IM_START + "assistant"
STOP_STRING = IM_END


def render_chat(messages: Sequence[tuple[str, str | None]], system: str = SYSTEM_PROMPT) -> str:
    """Render (role, text) messages with the qwen_2 template.

    ``role`` is the full role string (``"<|im_start|>user"``); a final message whose text is None renders as
    the bare role header, which is the generation prompt.
    """
    parts = [IM_START + "system\n" + system + IM_END + "\n"]
    for role, text in messages:
        parts.append(role + "\n" if text is None else role + "\n" + text + IM_END + "\n")
    return "".join(parts)


def first_turn_text(question: str, time_message: str | None = None) -> str:
    """The user text of a first turn: placeholder, time message (stripped) and question (HF `chat`)."""
    if time_message:
        return IMAGE_PLACEHOLDER + "\n" + time_message.strip() + " " + question
    return IMAGE_PLACEHOLDER + "\n" + question


def build_chat_prompt(
    question: str, time_message: str | None = None, history: Sequence[dict] | None = None
) -> tuple[str, str]:
    """The rendered prompt for one chat turn, and the user text to record in the history.

    ``history`` uses the original's format: ``[{"role": "<|im_start|>user", "content": ...}, ...]``. The first
    turn carries the placeholder and time message; later turns replay the history and add the plain question.
    """
    history = list(history or [])
    user_text = question if history else first_turn_text(question, time_message)
    messages = [(m["role"], m["content"]) for m in history]
    messages += [(USER_ROLE, user_text), (ASSISTANT_ROLE, None)]
    return render_chat(messages), user_text


def extend_history(history: Sequence[dict] | None, user_text: str, answer: str) -> list[dict]:
    return [
        *(history or []),
        {"role": USER_ROLE, "content": user_text},
        {"role": ASSISTANT_ROLE, "content": answer},
    ]


@dataclass
class TextTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` read from a checkpoint's tokenizer.json.

    No BOS is ever added (Qwen adds none); special tokens written in the text (``<|im_start|>``) map to
    their ids.
    """

    backend: object
    pad_token_id: int
    eos_token_id: int
    im_start_id: int

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"tokenizer file not found: {file}")
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            raise CheckpointError(f"tokenizer file {file} could not be read: {exc}") from None
        return cls.from_backend(backend)

    @classmethod
    def from_backend(cls, backend) -> TextTokenizer:
        ids = {name: backend.token_to_id(name) for name in (ENDOFTEXT, IM_END, IM_START)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise CheckpointError(f"tokenizer lacks the Qwen special tokens {missing}")
        return cls(backend, pad_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], im_start_id=ids[IM_START])

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_with_image(self, text: str) -> list[int]:
        """Tokenise each piece between ``<image>`` placeholders separately and join them with −200."""
        ids: list[int] = []
        for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            if piece:
                ids.extend(self.encode(piece))
        return ids

    def files(self) -> dict[str, str]:
        """The tokenizer files of an HF checkpoint directory (loadable by `tokenizers` and transformers)."""
        specials = {
            i: self.backend.id_to_token(i) for i in (self.pad_token_id, self.im_start_id, self.eos_token_id)
        }
        config = {
            "added_tokens_decoder": {
                str(i): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for i, t in sorted(specials.items())
            },
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "model_max_length": 32768,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
        }
        special_map = {"eos_token": IM_END, "pad_token": ENDOFTEXT}
        return {
            "tokenizer.json": self.backend.to_str(),
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        }

    def clean_answer(self, ids: Sequence[int]) -> str:
        """Decoded answer as the original returns it: special tokens skipped, stripped, trailing stop removed."""
        text = self.decode(ids, skip_special_tokens=True).strip()
        if text.endswith(STOP_STRING):
            text = text[: -len(STOP_STRING)].strip()
        return text
