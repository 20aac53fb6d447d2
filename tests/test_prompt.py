"""Prompt rendering and placeholder tokenization against the reference prompts (REFERENCE §5)."""

import json

import pytest

from videochat_flash.inference.prompt import (
    ASSISTANT_ROLE,
    IMAGE_TOKEN_INDEX,
    USER_ROLE,
    TextTokenizer,
    build_chat_prompt,
    extend_history,
)

from .conftest import REFERENCE, require_fixtures

CASES = ["case_a_res224_nocompress", "case_b_res448_compress", "case_c_image"]


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_dir(require_fixtures(REFERENCE / CASES[0]))


@pytest.mark.parametrize("case", CASES)
def test_reference_prompt_text_and_ids(case, tokenizer):
    golden = json.loads((require_fixtures(REFERENCE / case) / "golden.json").read_text())["prompt"]
    prompt, user_text = build_chat_prompt(golden["question"])
    assert prompt == golden["text"]
    assert user_text == golden["user_message"]
    ids = tokenizer.encode_with_image(prompt)
    assert ids == golden["input_ids"]
    assert ids.index(IMAGE_TOKEN_INDEX) == golden["image_placeholder_position"]


def test_first_turn_carries_time_message():
    msg = "\nThe video lasts for 12.34 seconds, and 64 frames are uniformly sampled from it. "
    prompt, user = build_chat_prompt("What happens?", msg)
    assert (
        user
        == "<image>\nThe video lasts for 12.34 seconds, and 64 frames are uniformly sampled from it. What happens?"
    )
    assert prompt.endswith("What happens?<|im_end|>\n<|im_start|>assistant\n")


def test_multi_turn_replays_history_without_placeholder():
    msg = "\nThe video lasts for 5.00 seconds, and 64 frames are uniformly sampled from it. "
    _, first_user = build_chat_prompt("Q1", msg)
    history = extend_history(None, first_user, "A1")
    assert history == [{"role": USER_ROLE, "content": first_user}, {"role": ASSISTANT_ROLE, "content": "A1"}]
    prompt, user = build_chat_prompt("Q2", msg, history)
    assert user == "Q2"
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{first_user}<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.count("<image>") == 1


def test_clean_answer_and_files(tokenizer, tmp_path):
    ids = tokenizer.encode(" red square <|im_end|>")
    assert tokenizer.clean_answer(ids) == "red square"
    for name, text in tokenizer.files().items():
        (tmp_path / name).write_text(text)
    again = TextTokenizer.from_dir(tmp_path)
    assert again.encode("What color is the square?") == tokenizer.encode("What color is the square?")
    assert (again.pad_token_id, again.im_start_id, again.eos_token_id) == (1021, 1022, 1023)
