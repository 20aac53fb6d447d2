"""Config parsing: every fixture config loads; unsupported values fail with one line naming field and value."""

import json

import pytest

from videochat_flash.config import CompressionConfig, VideoChatFlashConfig
from videochat_flash.errors import ConfigError

from .conftest import REFERENCE, require_fixtures


def fixture_config(case: str = "case_a_res224_nocompress") -> dict:
    return json.loads((require_fixtures(REFERENCE / case) / "config.json").read_text())


@pytest.mark.parametrize(
    "case,size,compress",
    [
        ("case_a_res224_nocompress", 224, False),
        ("case_b_res448_compress", 448, True),
        ("case_c_image", 224, False),
    ],
)
def test_fixture_configs_load(case, size, compress):
    cfg = VideoChatFlashConfig.from_dict(fixture_config(case))
    assert cfg.image_size == size
    assert cfg.vision.num_blocks == 2  # depth 3, select layer -2
    assert cfg.compression.enabled is compress
    assert cfg.compression.layers == (2, 4) and cfg.compression.ratios == (1.0, 0.75, 0.25)
    assert cfg.llm.hidden_size == 64 and cfg.llm.num_key_value_heads == 2
    assert cfg.image_grid_pinpoints[0] == (size, size) and len(cfg.image_grid_pinpoints) == 36


def test_released_defaults_are_umt_large():
    data = fixture_config()
    for key in ("umt_hidden_size", "umt_num_hidden_layers", "umt_num_attention_heads", "umt_patch_size"):
        data.pop(key)
    data["mm_hidden_size"] = 1024
    cfg = VideoChatFlashConfig.from_dict(data)
    assert (cfg.vision.hidden_size, cfg.vision.num_blocks, cfg.vision.num_heads) == (1024, 23, 16)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("mm_vision_tower", "internvideo2-1b", "mm_vision_tower"),
        ("mm_projector_type", "mlp2x_gelu", "mm_projector_type"),
        ("model_type", "llama", "model_type"),
        ("llm_compress_type", "random", "llm_compress_type"),
        ("vision_encode_type", "image", "vision_encode_type"),
        ("mm_newline_position", "grid", "mm_newline_position"),
        ("llm_image_token_ratio_list", [1.0, 0.5], "llm_image_token_ratio_list"),
    ],
)
def test_unsupported_values_fail_with_one_line(field, value, needle):
    data = fixture_config()
    data[field] = value
    with pytest.raises(ConfigError) as err:
        VideoChatFlashConfig.from_dict(data)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert repr(value) in message or str(value) in message or "entries" in message


def test_missing_llm_field_is_named():
    data = fixture_config()
    del data["hidden_size"]
    with pytest.raises(ConfigError, match="'hidden_size' is missing"):
        VideoChatFlashConfig.from_dict(data)


def test_round_trip_keeps_fields():
    cfg = VideoChatFlashConfig.from_dict(fixture_config("case_b_res448_compress"))
    again = VideoChatFlashConfig.from_dict(cfg.to_dict())
    assert again.vision == cfg.vision and again.llm == cfg.llm and again.compression == cfg.compression
    assert again.image_grid_pinpoints == cfg.image_grid_pinpoints


def test_pinpoint_string_form():
    data = fixture_config()
    data["image_grid_pinpoints"] = "(1x1),...,(6x6)"
    cfg = VideoChatFlashConfig.from_dict(data)
    assert cfg.image_grid_pinpoints == tuple((i * 224, j * 224) for i in range(1, 7) for j in range(1, 7))


def test_compression_stages():
    c = CompressionConfig.published()
    assert [c.stage_type(s) for s in range(2)] == ["uniform", "attention"]
    assert c.stage_counts(512, 0) == (512, 384) and c.stage_counts(512, 1) == (384, 128)
    assert (
        CompressionConfig(type="uniform1_attention", layers=(1, 2, 3), ratios=(1, 0.5, 0.25, 0.1)).stage_type(
            1
        )
        == "uniform"
    )


def test_published_compression_scales_to_depth():
    assert CompressionConfig.published() == CompressionConfig(True, "uniform0_attention", (4, 18), (1.0, 0.75, 0.25))
    assert CompressionConfig.published(4).layers == (1, 3)
    assert CompressionConfig.published(2).layers == (1,) and CompressionConfig.published(2).ratios == (1.0, 0.75)
