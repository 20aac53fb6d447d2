"""Training data: annotations, checks with file:line, mixtures, prompts and label masks, media, collation, sampling."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tests.test_train_support import (
    copy_tokenizer,
    make_dataset,
    make_image,
    make_video,
    one_thread,  # noqa: F401  (autouse fixture)
    qa,
    tiny_recipe,
)
from videochat_flash.inference.prompt import IGNORE_INDEX, IMAGE_TOKEN_INDEX, TextTokenizer
from videochat_flash.train import data as D


@pytest.fixture
def tok(tmp_path) -> TextTokenizer:
    return TextTokenizer.from_dir(copy_tokenizer(tmp_path / "tok"))


@pytest.fixture
def tiny_model(tmp_path):
    from videochat_flash.train.recipes import recipe_from_dict
    from videochat_flash.train.trainer import build_model, model_sources

    recipe = recipe_from_dict(tiny_recipe(tmp_path, None))
    return build_model(recipe, model_sources(recipe))


ALWAYS = {198, 1022, 1023}  # "\n", <|im_start|>, <|im_end|> in the fixture tokenizer (as in Qwen)


# ------------------------------------------------------------------------------------------ reading
def test_json_list_records_know_their_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('[\n  {"id": 1,\n   "x": 2},\n\n  {"id": 2}\n]\n')
    records = D.read_annotations(f)
    assert [(r.data["id"], r.line) for r in records] == [(1, 2), (2, 5)]
    assert records[1].where == f"{f}:5"


def test_invalid_json_names_file_and_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('[\n {"id": 1},\n {"id": 2,,}\n]\n')
    errors = D.check_annotations([f])
    assert len(errors) == 1 and errors[0].startswith(f"{f}:3: invalid JSON")
    j = tmp_path / "b.jsonl"
    j.write_text('{"id": 1}\n\n{"id": \n')
    assert D.check_annotations([j])[0].startswith(f"{j}:3: invalid JSON")


def test_malformed_records_are_reported_with_file_and_line(tmp_path):
    good = {"video": "a.mp4", "conversations": qa("q", "a")}
    bad = [
        {"video": "a.mp4"},  # 2: no conversations
        {
            "video": "a.mp4",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "bot", "value": "a"}],
        },
        {"video": "a.mp4", "conversations": qa("no placeholder", "a", media=False)},
        {
            "video": "a.mp4",
            "conversations": [{"from": "human", "value": "<image> <image> q"}, {"from": "gpt", "value": "a"}],
        },
        {"conversations": qa("placeholder without media", "a")},
        {"image": ["a.png", 3], "conversations": qa("q", "a")},
        {"video": "a.mp4", "start": 3, "conversations": qa("q", "a")},
        {"video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nq"}]},
        {
            "video": "a.mp4",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "human", "value": "a"}],
        },
        "not an object",
    ]
    f = tmp_path / "ann.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [good, *bad]) + "\n")
    errors = D.check_annotations([f])
    assert [e.split(": ", 1)[0] for e in errors] == [f"{f}:{n}" for n in range(2, 12)]
    expected = [
        "missing 'conversations'",
        "role 'bot'",
        "exactly one <image> placeholder, found 0",
        "exactly one <image> placeholder, found 2",
        "placeholder in a record without",
        "'image' must be",
        "'start' and 'end' must be given together",
        "no gpt answer",
        "must alternate",
        "JSON object",
    ]
    for err, phrase in zip(errors, expected, strict=True):
        assert phrase in err, err


def test_dataset_construction_fails_on_malformed_annotations(tmp_path, tok):
    f = tmp_path / "ann.jsonl"
    f.write_text(json.dumps({"video": "a.mp4", "conversations": []}) + "\n")
    with pytest.raises(D.DataError, match=r"ann\.jsonl:1: 'conversations' must be a non-empty list"):
        D.SupervisedDataset(D.load_mixture([D.DatasetEntry(str(f))]), tok)


def test_plain_template_check_needs_one_exchange(tmp_path):
    f = tmp_path / "a.jsonl"
    turns = qa("q", "a") + [{"from": "human", "value": "more"}, {"from": "gpt", "value": "b"}]
    f.write_text(json.dumps({"video": "v.mp4", "conversations": turns}) + "\n")
    assert D.check_annotations([f]) == []
    assert "exactly 2 turns" in D.check_annotations([f], template="plain")[0]


# ----------------------------------------------------------------------------------------- mixtures
@pytest.mark.parametrize(
    "strategy,expected",
    [
        ("all", list(range(10))),
        ("first:3", [0, 1, 2]),
        ("first:25%", [0, 1, 2]),
        ("end:2", [8, 9]),
        ("first2:3", [3, 4, 5]),
        ("first3:3", [6, 7, 8]),
        ("first4:3", [9]),
        ("first:0", []),
    ],
)
def test_sampling_strategies(strategy, expected):
    records = [D.Record(i, "f", i + 1) for i in range(10)]
    assert [r.data for r in D.apply_sampling_strategy(records, strategy)] == expected


@pytest.mark.parametrize("strategy", ["random:3", "last:3", "first:x", "end:5%"])
def test_bad_sampling_strategies_fail(strategy):
    with pytest.raises(D.DataError):
        D.parse_sampling_strategy(strategy)


def test_mixture_yaml_concatenates_entries_and_resolves_paths(tmp_path):
    (tmp_path / "anns").mkdir()
    for name, n in (("a.json", 4), ("b.jsonl", 3)):
        recs = [{"id": f"{name}{i}", "conversations": qa("q", "a", media=False)} for i in range(n)]
        text = json.dumps(recs) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in recs)
        (tmp_path / "anns" / name).write_text(text)
    y = tmp_path / "mix.yaml"
    y.write_text(
        "datasets:\n"
        "  - json_path: anns/a.json\n    sampling_strategy: end:2\n    data_root: media/a\n"
        "  - json_path: anns/b.jsonl\n    sampling_strategy: first:50%\n    video_read_type: img\n"
    )
    entries = D.read_mixture(y)
    assert entries[0].data_root == str(tmp_path / "media/a") and entries[1].video_read_type == "img"
    items = D.load_mixture(entries)
    assert [it.record.data["id"] for it in items] == ["a.json2", "a.json3", "b.jsonl0", "b.jsonl1"]
    y.write_text("datasets:\n  - json_path: x.json\n    sample: all\n")
    with pytest.raises(D.DataError, match="unknown keys"):
        D.read_mixture(y)


# ------------------------------------------------------------------------------ prompts and labels
def _expected_labels(ids: list[int], supervised_spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in supervised_spans:
        labels[a:b] = ids[a:b]
    return [i if i in ALWAYS else lab for i, lab in zip(ids, labels, strict=True)]


def test_qwen2_video_prompt_and_labels(tok):
    msg = "\nThe video lasts for 3.00 seconds, and 8 frames are uniformly sampled from it. "
    conv = D.parse_record(
        {
            "video": "v.mp4",
            "conversations": [
                {"from": "human", "value": "What moves?\n<image>"},
                {"from": "gpt", "value": "A red block."},
            ],
        }
    )
    ex = D.build_example(conv, tok, "qwen_2", msg)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    user = (
        "<|im_start|>user\n<image>\nThe video lasts for 3.00 seconds, and 8 frames are uniformly sampled from "
        "it. \nWhat moves?<|im_end|>\n"
    )
    answer = "<|im_start|>assistant\nA red block.<|im_end|>\n"
    assert ex.input_ids == tok.encode_with_image(system + user + answer)
    assert ex.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    start = len(tok.encode_with_image(system + user))
    assert ex.labels == _expected_labels(ex.input_ids, [(start, len(ex.input_ids))])
    assert ex.labels[ex.input_ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    # the assistant header is a target too; system/user text is not, except "\n" and the ChatML markers
    assert ex.labels[start] == 1022 and ex.labels[1] == IGNORE_INDEX and ex.labels[0] == 1022


def test_qwen2_multi_turn_and_key_variants(tok):
    conv = D.parse_record(
        {
            "image": "x.png",
            "conversations": [
                {"role": "assistant", "content": "dropped leading answer"},
                {"role": "user", "content": "<image>\nFirst QA_GT_caption_based_noisy question"},
                {"role": "assistant", "content": "one"},
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "two"},
            ],
        }
    )
    ex = D.build_example(conv, tok, "qwen_2", "\nThe video lasts for 9 seconds. ")  # images get no message
    turns = [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "<|im_start|>user\n<image>\nFirst  question<|im_end|>\n",
        "<|im_start|>assistant\none<|im_end|>\n",
        "<|im_start|>user\nsecond<|im_end|>\n",
        "<|im_start|>assistant\ntwo<|im_end|>\n",
    ]
    assert ex.input_ids == tok.encode_with_image("".join(turns))
    bounds = [len(tok.encode_with_image("".join(turns[:k]))) for k in range(6)]
    spans = [(bounds[2], bounds[3]), (bounds[4], bounds[5])]
    assert ex.labels == _expected_labels(ex.input_ids, spans)
    # the second user turn: only <|im_start|>, the two "\n" and <|im_end|> are targets
    assert sum(lab != IGNORE_INDEX for lab in ex.labels[bounds[3] : bounds[4]]) == 4


def test_plain_template(tok):
    conv = D.parse_record({"video": "v.mp4", "conversations": qa("ignored question", "a caption")})
    ex = D.build_example(conv, tok, "plain", "\nThe video lasts for 3.00 seconds. ")
    assert ex.input_ids == [IMAGE_TOKEN_INDEX, *tok.encode("a caption\n")]
    assert ex.labels == [IGNORE_INDEX, *tok.encode("a caption\n")]


def test_text_only_record_without_time_message(tok):
    conv = D.parse_record({"conversations": qa("hi", "hello", media=False)})
    ex = D.build_example(conv, tok, "qwen_2", None)
    assert IMAGE_TOKEN_INDEX not in ex.input_ids
    assert tok.decode([i for i in ex.input_ids], skip_special_tokens=False).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    )


# ------------------------------------------------------------------------------------------- media
def test_dataset_builds_video_image_and_text_samples(tmp_path, tok, tiny_model):
    make_video(tmp_path / "m" / "v.mp4", frames=10)
    make_image(tmp_path / "m" / "i.png", width=48, height=24)
    make_image(tmp_path / "m" / "j.png", width=20, height=30, seed=1)
    ann = tmp_path / "a.json"
    ann.write_text(
        json.dumps(
            [
                {"video": "v.mp4", "conversations": qa("what?", "blocks.")},
                {"image": "i.png", "conversations": qa("what?", "noise.")},
                {"image": ["i.png", "j.png"], "conversations": qa("compare", "both noise.")},
                {"conversations": qa("hi", "hello", media=False)},
            ]
        )
    )
    items = D.load_mixture([D.DatasetEntry(str(ann), data_root=str(tmp_path / "m"))])
    ds = D.SupervisedDataset(
        items,
        tok,
        "qwen_2",
        D.VideoSampling(8, 4, "dynamic_fps1", 4, "short"),
        D.MediaProcessor.for_model(tiny_model),
        max_length=512,
    )
    video, image, multi, text = (ds[i].sample for i in range(4))
    assert (
        video.modality == "video" and video.pixels.shape[1:] == (3, 32, 32) and video.pixels.shape[0] % 4 == 0
    )
    prompt = tok.decode(video.input_ids[video.input_ids >= 0].tolist(), skip_special_tokens=False)
    assert "frames are uniformly sampled from it. \nwhat?" in prompt
    assert image.modality == "image" and image.image_grid == (1, 2) and image.pixels.shape == (3, 3, 32, 32)
    assert multi.image_grid is None and multi.pixels.shape == (2, 3, 32, 32)
    assert text.modality == "text" and text.pixels is None
    for s in (video, image, multi):
        assert int((s.input_ids == IMAGE_TOKEN_INDEX).sum()) == 1
        assert s.labels[s.input_ids == IMAGE_TOKEN_INDEX].item() == IGNORE_INDEX
    batch = D.collate_samples([ds[0], ds[3]])
    assert isinstance(batch, list) and len(batch) == 2 and batch.skipped == []
    loss = tiny_model(list(batch))
    assert torch.isfinite(loss)


def test_broken_media_is_skipped_and_reported(tmp_path, tok, tiny_model, caplog):
    mixture = make_dataset(tmp_path, videos=1, images=1, texts=0, broken=("missing", "corrupt"))
    ds = D.dataset_from_mixture(
        mixture,
        tokenizer=tok,
        sampling=D.VideoSampling(8, 4),
        processor=D.MediaProcessor.for_model(tiny_model),
    )
    assert len(ds) == 4
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=D.collate_samples)
    with caplog.at_level("WARNING"):
        batches = list(loader)
    skipped = [s for b in batches for s in b.skipped]
    assert sum(len(b) for b in batches) == 4  # skipped records are replaced by the next good one
    assert all(b[i].modality != "text" for b in batches for i in range(len(b)))
    assert {s.path.rsplit("/", 1)[-1] for s in skipped} == {"corrupt.mp4", "does_not_exist.mp4"}
    assert {s.where for s in skipped} == {f"{tmp_path / 'ann.jsonl'}:3", f"{tmp_path / 'ann.jsonl'}:4"}
    assert "file not found" in caplog.text and "does_not_exist.mp4" in caplog.text


def test_training_reports_skipped_samples(tmp_path, capsys):
    from videochat_flash.train.recipes import recipe_from_dict
    from videochat_flash.train.trainer import train

    mixture = make_dataset(tmp_path, videos=1, images=1, texts=0, broken=("missing", "corrupt"))
    recipe = recipe_from_dict(tiny_recipe(tmp_path, mixture, data={"shuffle": False, "num_workers": 1}))
    result = train(recipe)
    assert result.steps == 2 and result.samples_skipped == 2
    out = capsys.readouterr().out
    assert "samples skipped (missing or undecodable media): 2" in out and "corrupt.mp4" in out
    lines = (tmp_path / "out" / "skipped_samples.jsonl").read_text().splitlines()
    assert len(lines) == 2  # distinct records, even when one was hit again as a replacement
    last = json.loads((tmp_path / "out" / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["samples_skipped"] == 2


# ----------------------------------------------------------------------------------------- sampling
def test_sampler_one_process_with_accumulation_equals_two_ranks():
    one = D.MicroBatchSampler(20, 2, 4, world_size=1, rank=0, seed=3, epochs=2)
    two = [D.MicroBatchSampler(20, 2, 2, world_size=2, rank=r, seed=3, epochs=2) for r in range(2)]
    a = list(one)
    b0, b1 = list(two[0]), list(two[1])
    assert len(a) == 2 * 2 * 4 and len(b0) == len(b1) == 2 * 2 * 2
    for step in range(4):
        single = a[4 * step : 4 * step + 4]
        paired = [b0[2 * step], b1[2 * step], b0[2 * step + 1], b1[2 * step + 1]]
        assert single == paired
    first_epoch = [i for mb in a[:8] for i in mb]
    assert len(set(first_epoch)) == 16  # no repeats within an epoch (the tail of 4 is dropped)


def test_sampler_resumes_at_any_micro_batch():
    full = list(D.MicroBatchSampler(30, 3, 2, seed=1, epochs=3))
    resumed = list(D.MicroBatchSampler(30, 3, 2, seed=1, epochs=3, start=7))
    assert resumed == full[7:]


def test_sampler_groups_by_modality():
    mods = ["video"] * 9 + ["image"] * 6 + ["text"] * 5
    s = D.MicroBatchSampler(20, 2, 2, seed=0, modalities=mods, group_by_modality=True)
    steps = list(s)
    per_step = [Counter(mods[i] for mb in steps[k : k + 2] for i in mb) for k in range(0, len(steps), 2)]
    assert len(per_step) == 5
    assert sum(len(c) == 1 for c in per_step) >= 3  # full single-modality chunks; one mixed remainder
