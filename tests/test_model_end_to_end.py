"""The public model API against the reference (all three fixture cases), plus checkpoint loading errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from videochat_flash import VideoChatFlash
from videochat_flash.errors import CheckpointError, ConfigError
from videochat_flash.inference.prompt import build_chat_prompt
from videochat_flash.model.factory import build_tiny_checkpoint

from .conftest import REFERENCE, require_fixtures

CASES = ["case_a_res224_nocompress", "case_b_res448_compress", "case_c_image"]
ATOL = 1e-4  # float32 parity bound on O(1) values (observed ~1e-6)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    directory = require_fixtures(REFERENCE / request.param)
    golden = load_file(str(directory / "golden.safetensors"))
    meta = json.loads((directory / "golden.json").read_text())
    return directory, VideoChatFlash.from_pretrained(directory), golden, meta


def visual_of(model, golden):
    if "video_frames_uint8" in golden:
        return model.encode_frames(golden["video_frames_uint8"].numpy())
    return model.encode_image(golden["image_uint8"].numpy())


def test_public_api_matches_reference(case):
    _, model, golden, meta = case
    visual = visual_of(model, golden)
    assert (visual - golden["visual_tokens"]).abs().max().item() <= ATOL
    prompt, _ = build_chat_prompt(meta["prompt"]["question"])
    embeds, span = model.embed_with_visual(model.tokenizer.encode_with_image(prompt), visual)
    assert span == (meta["prompt"]["image_placeholder_position"], golden["visual_tokens"].shape[0])
    assert (embeds - golden["inputs_embeds"][0]).abs().max().item() <= ATOL
    result = model.generate(prompt, visual, max_new_tokens=8)
    assert result.token_ids == golden["generated_ids"].tolist()
    assert result.text == model.tokenizer.clean_answer(result.token_ids)


def test_save_and_reload_round_trip(case, tmp_path):
    directory, model, golden, meta = case
    out = model.save_pretrained(tmp_path / "copy")
    saved = load_file(str(out / "model.safetensors"))
    original = load_file(str(directory / "model.safetensors"))
    assert sorted(saved) == sorted(original)  # the original key names, nothing more, nothing less
    again = VideoChatFlash.from_pretrained(out)
    prompt, _ = build_chat_prompt(meta["prompt"]["question"])
    visual = visual_of(again, golden)
    assert again.generate(prompt, visual, max_new_tokens=8).token_ids == golden["generated_ids"].tolist()


# ---------------------------------------------------------------------- bad checkpoints
@pytest.fixture
def writable_checkpoint(tmp_path):
    src = require_fixtures(REFERENCE / CASES[0])
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("golden.*"))
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_directory():
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        VideoChatFlash.from_pretrained("/nonexistent/ckpt")


def test_missing_weights(writable_checkpoint):
    (writable_checkpoint / "model.safetensors").unlink()
    (writable_checkpoint / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickled weights are not loaded"):
        VideoChatFlash.from_pretrained(writable_checkpoint)


def test_missing_and_wrong_shape_keys_are_named(writable_checkpoint):
    path = writable_checkpoint / "model.safetensors"
    state = load_file(str(path))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.mm_projector.mlp.0.bias"] = torch.zeros(3)
    state["model.extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        VideoChatFlash.from_pretrained(writable_checkpoint)
    message = str(err.value)
    assert "missing keys: model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected keys: model.extra.weight" in message
    assert "model.mm_projector.mlp.0.bias (3,) != (64,)" in message
    assert "\n" not in message


def test_corrupt_safetensors_header(writable_checkpoint):
    (writable_checkpoint / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or not safetensors"):
        VideoChatFlash.from_pretrained(writable_checkpoint)


@pytest.mark.parametrize(
    "field,value", [("mm_projector_type", "mlp2x_gelu"), ("mm_vision_tower", "internvideo2")]
)
def test_unsupported_parts(writable_checkpoint, field, value):
    config = json.loads((writable_checkpoint / "config.json").read_text())
    config[field] = value
    (writable_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=field):
        VideoChatFlash.from_pretrained(writable_checkpoint)


def test_sharded_checkpoint(writable_checkpoint):
    path = writable_checkpoint / "model.safetensors"
    state = load_file(str(path))
    names = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(writable_checkpoint / file))
        weight_map.update(dict.fromkeys(keys, file))
    path.unlink()
    (writable_checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = VideoChatFlash.from_pretrained(writable_checkpoint)
    assert torch.equal(model.llm.lm_head.weight, state["lm_head.weight"])


def test_tied_lm_head_when_absent(writable_checkpoint):
    path = writable_checkpoint / "model.safetensors"
    state = load_file(str(path))
    del state["lm_head.weight"]
    save_file(state, str(path))
    model = VideoChatFlash.from_pretrained(writable_checkpoint)
    assert model.config.llm.tie_word_embeddings
    logits = model.llm.logits(torch.ones(1, 64))
    assert torch.allclose(logits[0], state["model.embed_tokens.weight"].sum(-1), atol=ATOL)


def test_tiny_checkpoint_answers(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "tiny", seed=3)
    model = VideoChatFlash.from_pretrained(directory)
    frames = np.random.default_rng(0).integers(0, 255, (8, 40, 48, 3), dtype=np.uint8)
    visual = model.encode_frames(frames)
    assert visual.shape == (16 * 8, model.config.llm.hidden_size)
    prompt, _ = build_chat_prompt("What is shown?")
    first = model.generate(prompt, visual, max_new_tokens=5)
    again = model.generate(prompt, visual, max_new_tokens=5)
    assert first.token_ids == again.token_ids and len(first.token_ids) <= 5


def test_bfloat16_runs(case):
    directory, _, golden, meta = case
    model = VideoChatFlash.from_pretrained(directory, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    visual = visual_of(model, golden)
    assert visual.dtype == torch.bfloat16
    prompt, _ = build_chat_prompt(meta["prompt"]["question"])
    result = model.generate(prompt, visual, max_new_tokens=2)
    assert len(result.token_ids) == 2
    # Values are not compared here: ToMe's matching flips on bf16 ties (see test_model_vision for the bounded
    # parts); the LLM's bf16 closeness is checked in test_model_llm.
    assert torch.isfinite(visual.float()).all()


def test_auto_device_and_dtype(monkeypatch):
    from videochat_flash.model import videochat

    cpu = torch.device("cpu")
    monkeypatch.setattr(videochat, "cpu_has_fast_bf16", lambda: False)
    assert videochat.resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(videochat, "cpu_has_fast_bf16", lambda: True)
    assert videochat.resolve_dtype("auto", cpu) == torch.bfloat16
    assert videochat.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert videochat.resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        videochat.resolve_dtype("fp8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            videochat.resolve_device("cuda")
    assert videochat.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_prompt_longer_than_the_model_limit_is_a_clear_error(tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "tiny", seed=1, max_length=100)
    model = VideoChatFlash.from_pretrained(directory)
    visual = model.encode_frames(np.zeros((8, 16, 16, 3), dtype=np.uint8))  # 128 visual tokens > 100
    prompt, _ = build_chat_prompt("What is shown?")
    with pytest.raises(ValueError, match="tokenizer_model_max_length 100; use fewer frames"):
        model.generate(prompt, visual, max_new_tokens=2)
