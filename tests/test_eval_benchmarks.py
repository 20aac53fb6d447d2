"""Standard benchmarks: prompts, answer extraction and aggregation against the rules of REFERENCE §11 / §11.8.

Expected strings and values are written out literally from the REFERENCE text, not produced by the code under test.
"""

import json
from dataclasses import replace

import pytest

from videochat_flash.eval import BENCHMARKS, Benchmark, BenchmarkItem, load_benchmark
from videochat_flash.eval.bench import BenchmarkError
from videochat_flash.eval.bench.charades import parse_span
from videochat_flash.eval.bench.longvideobench import parse_choice
from videochat_flash.eval.bench.mcq import mcq_normalise

from .conftest import FIXTURES, require_fixtures

ANN = FIXTURES / "benchmarks"
_CACHE: dict = {}


def bench(name: str, **kw) -> Benchmark:
    require_fixtures(ANN)
    if kw:
        return load_benchmark(name, ANN, **kw)
    if name not in _CACHE:
        _CACHE[name] = load_benchmark(name, ANN)
    return _CACHE[name]


def find(b: Benchmark, source: str, index: int) -> BenchmarkItem:
    return next(it for it in b if it.source == source and it.index == index)


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------
def test_names_and_sizes():
    assert BENCHMARKS == [
        "mvbench",
        "videomme",
        "videomme_w_subtitle",
        "longvideobench",
        "mlvu",
        "lvbench",
        "perceptiontest",
        "charades",
    ]
    sizes = {
        "mvbench": 4000,
        "videomme": 2700,
        "longvideobench": 1337,
        "mlvu": 2175,
        "lvbench": 1519,
        "charades": 3720,
    }
    for name, n in sizes.items():
        b = bench(name)
        assert len(b) == n
        assert len({it.id for it in b}) == n
    assert (
        bench("mvbench").tasks[:2] == ["action_antonym", "action_count"] and len(bench("mvbench").tasks) == 20
    )
    assert bench("lvbench").tasks == ["cartoon", "documentary", "live", "selfmedia", "sport", "tv"]
    assert bench("mlvu").tasks == [
        "plotQA",
        "needle",
        "ego",
        "count",
        "order",
        "anomaly_reco",
        "topic_reasoning",
    ]


def test_frames_and_generation_lengths():
    assert bench("lvbench").max_frames == 640
    for name in ("mvbench", "videomme", "longvideobench", "mlvu", "charades"):
        assert bench(name).max_frames == 512
    # §12: 16 (MVBench, VideoMME, MLVU, LVBench), 32 (LongVideoBench), 50 (Charades)
    expected = {
        "mvbench": 16,
        "videomme": 16,
        "mlvu": 16,
        "lvbench": 16,
        "longvideobench": 32,
        "charades": 50,
    }
    for name, n in expected.items():
        assert {it.max_new_tokens for it in bench(name)} == {n}


def test_unknown_benchmark_and_missing_folder(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("mmbench", tmp_path)
    with pytest.raises(BenchmarkError, match="annotation folder not found"):
        load_benchmark("mvbench", tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="annotation file not found"):
        load_benchmark("charades", tmp_path)
    with pytest.raises(BenchmarkError, match="no PerceptionTest questions"):
        load_benchmark("perceptiontest", tmp_path)


# --------------------------------------------------------------------------------------------------------
# MVBench
# --------------------------------------------------------------------------------------------------------
def test_mvbench_prompt_media_and_paths(tmp_path):
    b = bench("mvbench")
    it = b[0]
    assert (it.source, it.index, it.task, it.id) == (
        "MVBench/json/action_antonym.json",
        0,
        "action_antonym",
        "MVBench/json/action_antonym.json#0",
    )
    assert it.prompt == (
        "Question: What is the action performed by the person in the video?\nOption:\n"
        "(A) Not sure\n(B) Scattering something down\n(C) Piling something up\n\nOnly give the best option."
    )
    assert it.answer == "C"  # "Piling something up" is the third candidate
    assert it.media == {"video_read_type": "decord"} and it.video is None

    loc = find(b, "MVBench/json/action_localization.json", 1)
    assert loc.media == {"video_read_type": "decord", "start": 0.0, "end": 15.7}
    assert loc.answer == "A"

    ep = find(b, "MVBench/json/episodic_reasoning.json", 0)
    assert ep.media == {"video_read_type": "img", "start": 0.0, "end": 38.32}
    assert ep.prompt.endswith("(E) Mrs Ruiz made him dress up\n\nOnly give the best option.")

    one = find(b, "MVBench/json/counterfactual_inference.json", 81)
    assert one.prompt == (
        "Question: Without the purple object, which event will happen?\nOption:\n"
        "(A) The cube collides with the gray cylinder\n\nOnly give the best option."
    )

    # video resolution: task folder table, overridable; missing files still resolve to the first candidate
    vb = bench("mvbench", videos=tmp_path)
    assert vb[0].video == str(tmp_path / "ssv2_video" / "166583.webm")
    ep2 = find(vb, "MVBench/json/episodic_reasoning.json", 0)
    assert ep2.video == str(tmp_path / "tvqa/frames_fps3_hq/castle_s07e04_seg02_clip_14")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "166583.webm").write_bytes(b"")
    vb = bench("mvbench", videos=tmp_path, video_dirs={"action_antonym": "flat"})
    assert vb[0].video == str(tmp_path / "flat" / "166583.webm")
    with pytest.raises(BenchmarkError, match="unknown tasks"):
        bench("mvbench", videos=tmp_path, video_dirs={"action_antonyms": "x"})


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("C", 1.0),  # bare letter
        ("(C)", 1.0),  # parentheses become spaces, then the standalone letter
        ("C.", 1.0),  # period removed, "c" -> C
        ("C. Piling something up", 1.0),  # ^([A-E])\.\s*(.+)$ branch
        ("The answer is C", 1.0),  # no A-E word before "c"
        ("c", 1.0),  # lowercase counts (case-insensitive letter search)
        ("Piling something up", 0.0),  # option text without letter: no standalone A-E, text != "C"
        ("", 0.0),  # empty: wrong (and left out of the denominator in the aggregate)
        ("A and C", 0.0),  # first standalone letter wins: A
        ("C and A", 1.0),
        ("It is a pile of things", 0.0),  # the article "a" is read as A
        ("  C  ", 1.0),  # the wrapper strips the output
    ],
)
def test_mvbench_scores(prediction, expected):
    b = bench("mvbench")
    assert b.score(b[0], prediction) == expected  # ground truth C


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A_B", "A"),  # "_" touches no space: replaced by a space, "a" is standalone
        ("x _A_B", "x ab"),  # " _" occurs: every "_" deleted, "ab" holds no standalone letter
        ("1,000 A_B", "1000 ab"),  # digit-comma-digit: all listed punctuation deleted
        ("see e.g. this", "see eg this"),  # periods not followed by a digit deleted (else "e" would be E)
        ("3.5 apples", "3.5 apples"),  # a period before a digit stays
        ("b. foo", "B"),  # letter-dot branch, upper-cased
        ("B.\nfoo", "B"),  # no DOTALL: falls to the general branch, first standalone letter
    ],
)
def test_mcq_normalise(text, expected):
    assert mcq_normalise(text) == expected


def test_mcq_option_text_letters_and_duplicates():
    b = bench("mvbench")
    co = find(b, "MVBench/json/character_order.json", 31)  # candidates b, a, e; answer "b" = (A)
    assert co.answer == "A"
    assert b.score(co, "b") == 0.0  # the option text "b" is read as the letter B
    assert b.score(co, "A") == 1.0
    co39 = find(b, "MVBench/json/character_order.json", 39)  # candidates a, e, t; answer "e" = (B)
    assert b.score(co39, "e") == 0.0  # "e" becomes E
    assert b.score(co39, "B") == 1.0

    m = bench("mlvu")
    dup = find(m, "MLVU_MC/json/1_plotQA.json", 335)  # ['Six', 'Three', 'Three', 'Eight'], answer Three
    assert dup.answer == "B"  # first equal candidate
    assert m.score(dup, "C") == 0.0 and m.score(dup, "B") == 1.0
    missing = find(m, "MLVU_MC/json/2_needle.json", 34)  # answer not among candidates
    assert missing.answer is None
    for pred in ("A", "B", "C", "D", "Catching a flying drone quadcopter", ""):
        assert m.score(missing, pred) == 0.0
    empty = find(m, "MLVU_MC/json/7_topic_reasoning.json", 26)  # all empty; "" is candidate A
    assert empty.answer == "A"
    assert (
        empty.prompt
        == "Question:\nOption:\n(A) \n(B) \n(C) \n(D) \nAnswer with the option's letter from the given choices directly."
    )


# --------------------------------------------------------------------------------------------------------
# MLVU / LVBench
# --------------------------------------------------------------------------------------------------------
def test_mlvu_prompt_and_paths(tmp_path):
    it = bench("mlvu")[0]
    assert it.prompt == (
        "Question:What color is the main male character in the video?\nOption:\n"
        "(A) Yellow\n(B) Red\n(C) Green\n(D) Blue\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert (it.answer, it.task, it.source, it.category) == (
        "A",
        "plotQA",
        "MLVU_MC/json/1_plotQA.json",
        {"question_type": "plotQA"},
    )
    vb = bench("mlvu", videos=tmp_path)
    assert vb[0].video == str(tmp_path / "1_plotQA" / "movie101_66.mp4")
    (tmp_path / "movie101_66.mp4").write_bytes(b"")  # flat layout is found as a fallback
    assert bench("mlvu", videos=tmp_path)[0].video == str(tmp_path / "movie101_66.mp4")


def test_lvbench_prompt_and_scores(tmp_path):
    b = bench("lvbench")
    it = b[0]
    assert it.prompt == (
        "What year appears in the opening caption of the video?\n"
        "A. (A) 1636\nB. (B) 1366\nC. (C) 1363\nD. (D) 1633\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert (it.answer, it.task, it.media) == ("D", "cartoon", {"video_read_type": "img"})
    assert b.score(it, "D") == 1.0
    assert b.score(it, "(D) 1633") == 1.0  # parentheses removed, first standalone letter D
    assert b.score(it, "1633") == 0.0  # no letter: "1633" != "D"
    assert bench("lvbench", videos=tmp_path)[0].video == str(tmp_path / "00000000")


# --------------------------------------------------------------------------------------------------------
# Video-MME
# --------------------------------------------------------------------------------------------------------
VMME_Q2 = (
    "Question: How many red socks are above the fireplace at the end of this video?\nOption:\n"
    "A. 1.\nB. 4.\nC. 2.\nD. 3."
)
VMME_PLAIN = (
    "These are the frames of a video. Select the best answer to the following multiple-choice question based on "
    "the video. Respond with only the letter (A, B, C, or D) of the correct option."
)
VMME_SUBS = (
    "These are the frames and subtitles of a video. Select the best answer to the following multiple-choice "
    "question based on the video and the subtitles. Respond with only the letter (A, B, C, or D) of the correct "
    "option."
)


def test_videomme_prompts(tmp_path):
    it = bench("videomme")[2]
    assert (
        it.prompt
        == VMME_PLAIN + "\n" + VMME_Q2 + "\nAnswer with the option's letter from the given choices directly."
    )
    assert (it.answer, it.source, it.index) == ("D", "Video-MME/videomme/test-00000-of-00001.parquet", 2)
    assert it.category == {
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "task_type": "Counting Problem",
    }

    # subtitle variant without any .srt: bare newline, then the plain instruction, ends with "The best answer is:"
    nosub = bench("videomme_w_subtitle", subtitles=tmp_path)[2]
    assert nosub.prompt == "\n" + VMME_PLAIN + "\n" + VMME_Q2 + "\nThe best answer is:"

    srt = tmp_path / "fFjv93ACGo8.srt"
    srt.write_text(
        "1\n00:00:01,000 --> 00:00:02,000\n"
        '<font color="white" size=".72c">Hello there</font>\n\n'
        "2\n00:00:03,000 --> 00:00:04,000\n"
        '<font color="white" size=".72c">General Kenobi</font> <font color="white" size=".72c">second</font>\n\n'
        "3\n00:00:05,000 --> 00:00:06,000\nuntagged line\n",
        encoding="utf-8",
    )
    withsub = bench("videomme_w_subtitle", subtitles=tmp_path)[2]
    assert withsub.prompt == (
        "This video's subtitles are listed below: \nHello there\nGeneral Kenobi\n"
        + VMME_SUBS
        + "\n"
        + VMME_Q2
        + "\nThe best answer is:"
    )
    # an .srt with no tagged lines keeps the header, followed by the no-subtitle instruction
    srt.write_text("1\n00:00:01,000 --> 00:00:02,000\nplain text\n", encoding="utf-8")
    untagged = bench("videomme_w_subtitle", subtitles=tmp_path)[2]
    assert (
        untagged.prompt
        == "This video's subtitles are listed below: \n\n"
        + VMME_PLAIN
        + "\n"
        + VMME_Q2
        + "\nThe best answer is:"
    )


def test_videomme_video_resolution(tmp_path):
    assert bench("videomme", videos=tmp_path)[0].video == str(tmp_path / "fFjv93ACGo8.mp4")
    (tmp_path / "fFjv93ACGo8.mkv").write_bytes(b"")
    assert bench("videomme", videos=tmp_path)[0].video == str(tmp_path / "fFjv93ACGo8.mkv")
    (tmp_path / "fFjv93ACGo8.MP4").write_bytes(b"")  # .MP4 is tried before .mkv
    assert bench("videomme", videos=tmp_path)[0].video == str(tmp_path / "fFjv93ACGo8.MP4")


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("C", 1.0),
        ("(C)", 1.0),
        ("C. Berries.", 1.0),
        ("The answer is C", 1.0),  # prefix deleted
        ("The best answer is C.", 1.0),
        ("Best option: (C)", 0.0),  # "Best option:" is never deleted; the B of "Best" wins
        ("Answer: C", 0.0),  # the A of "Answer" wins
        ("Berries.", 0.0),  # the B of "Berries" wins
        ("c", 0.0),  # lowercase letters give nothing
        ("", 0.0),
        (
            "the decoration with the largest number is clearly the one on top of the tree",
            0.0,
        ),  # >10 words, no A-D
    ],
)
def test_videomme_scores(prediction, expected):
    b = bench("videomme")
    assert b.score(b[0], prediction) == expected  # ground truth C ("C. Berries.")


# --------------------------------------------------------------------------------------------------------
# LongVideoBench
# --------------------------------------------------------------------------------------------------------
LVB_INSTR = (
    ".\n Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter of the correct option.\nQuestion: "
)
LVB_POST = "\nAnswer with the option's letter from the given choices directly.\n"


def test_longvideobench_prompt_without_subtitles():
    b = bench("longvideobench")
    it = b[1096]  # the only row with three options
    assert it.prompt == (
        " This video's subtitles are listed below: \n"
        + LVB_INSTR
        + "What is the ethnicity of the first person to appear in the video?\n(A). White\n(B). Black\n(C). Asian"
        + LVB_POST
    )
    assert (it.answer, it.options, it.max_new_tokens) == ("B", ("White", "Black", "Asian"), 32)
    assert it.category == {
        "duration_group": 600,
        "question_category": "O3O",
        "topic_category": "Recreational: MR-Movie-Recaps",
    }


def test_longvideobench_interleaved_subtitles(tmp_path):
    # row 53: duration 508 (<= 512, frame times 0..507), starting_timestamp_for_subtitles 765
    (tmp_path / "KIf2fGmluhY_en.json").write_text(
        json.dumps(
            [
                {"timestamp": [700.0, 760.0], "text": "before"},  # (-65, -5): no frame time inside
                {"start": "00:12:50.000", "end": "00:12:53.500", "line": "hms line"},  # (5, 8.5): kept
                {
                    "timestamp": [770.5, 771],
                    "text": "int end",
                },  # int end -> 508 -> e-s < 1 around -125.75: dropped
                {"timestamp": [775.0, 776.0], "text": "edge"},  # (10, 11): strict inequalities: dropped
                {"timestamp": [780.2, 780.4], "text": "short"},  # widened to (14.8, 15.8): 15 inside, kept
                {
                    "timestamp": [781.0, None],
                    "text": "null end",
                },  # None -> 508 -> (16, -257) widened: dropped
            ]
        ),
        encoding="utf-8",
    )
    # row 467: duration 2853.83 (> 512): frame times 2853.83/512*i = 0, 5.574, 11.148, ...
    (tmp_path / "sEiyR7-0FOA_en.json").write_text(
        json.dumps(
            [
                {"timestamp": [1.2, 4.8], "text": "between frames"},  # no grid time in (1.2, 4.8): dropped
                {"timestamp": [11.0, 11.3], "text": "on frame"},  # widened (10.65, 11.65) holds 11.148: kept
            ]
        ),
        encoding="utf-8",
    )
    with pytest.warns(UserWarning, match="751 LongVideoBench subtitle files are missing"):
        b = bench("longvideobench", subtitles=tmp_path)
    assert b[53].prompt == (
        " This video's subtitles are listed below: \nhms line\nshort"
        + LVB_INSTR
        + "The title on the screen is 'Datasets', below it are inference formulas, and a dynamic graph appears in "
        "the middle. In the top right corner, there is a man with glasses explaining. What did the boy holding the "
        "ball do when he appeared for the first time?\n"
        "(A). Threw the ball into the distance\n(B). Shot the ball towards the basket\n(C). Dribbled the ball\n"
        "(D). Stepped on the ball with his foot\n(E). Passed the ball to someone else" + LVB_POST
    )
    assert b[467].prompt.startswith(" This video's subtitles are listed below: \non frame" + LVB_INSTR)
    assert b[0].prompt.startswith(
        " This video's subtitles are listed below: \n" + LVB_INSTR
    )  # no file: empty


def test_longvideobench_parsing():
    opts = ["a red car", "the blue house", "Jim", "DATA set"]
    assert parse_choice("B", opts, "s") == "B"
    assert parse_choice("(B)", opts, "s") == "B"
    assert parse_choice("B.", opts, "s") == "B"  # "." stripped from the ends
    assert parse_choice("B,", opts, "s") == "B"  # "," stripped from the ends
    assert (
        parse_choice("A. B.", opts, "s") == "B"
    )  # "B " found (after stripping the final "."); "A." is not "A "
    assert parse_choice("(A) or (C)", opts, "s") == "C"  # several bracketed: last occurrence wins
    assert parse_choice("C and B are", opts, "s") == "B"  # " B " occurs after " C "
    assert parse_choice("D.C.", opts, "s") == "C"  # "." stripped, then "C " is found
    assert (
        parse_choice("D.C.x", opts, "s") == "C"
    )  # "X." case: no " X " exists, the first in A-E order wins ...
    assert parse_choice("C.D.x", opts, "s") == "C"  # ... wherever it occurs
    assert parse_choice("I think it is the blue house for sure", opts, "s") == "B"  # > 5 words: option text
    assert parse_choice("i believe we see the data set right here", opts, "s") == "D"  # case-insensitive text
    assert parse_choice("I believe we see the DATA SET right here", opts, "s") == "A"  # "A " inside "DATA "
    # fallbacks to the seeded random letter: lowercase, letter followed by newline or comma, empty, short text
    fallback = parse_choice("", opts, "s")
    assert fallback in "ABCD"
    for text in ("b", "B\nbecause", "B, because", "the blue house", "Jim"):
        assert parse_choice(text, opts, "s") == fallback
    assert len({parse_choice("", opts, f"seed{i}") for i in range(40)}) > 1  # the seed matters


def test_longvideobench_scores():
    b = bench("longvideobench")
    it = b[0]  # correct_choice 1 -> B
    assert it.answer == "B"
    assert b.score(it, "B") == 1.0
    assert b.score(it, "(B)") == 1.0
    assert b.score(it, "A") == 0.0
    fallback = parse_choice("", list(it.options), it.id)
    assert b.score(it, "") == (1.0 if fallback == "B" else 0.0)
    assert b.score(it, "") == b.score(it, "")  # deterministic


# --------------------------------------------------------------------------------------------------------
# PerceptionTest (no fixture file: a small parquet in the HF layout)
# --------------------------------------------------------------------------------------------------------
def test_perceptiontest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "PerceptionTest" / "mc_question_val"
    folder.mkdir(parents=True)
    rows = [
        {
            "video_name": "video_10909",
            "question": "Is the camera moving or static?",
            "question_id": "0",
            "options": ["I don't know", "moving", "static or shaking"],
            "answer_id": "2",
            "area": "physics",
            "reasoning": "descriptive",
            "tag": ["motion"],
        },
        {
            "video_name": "video_7",
            "question": "How many objects?",
            "question_id": "1",
            "options": ["1", "2", "3"],
            "answer_id": "0",
            "area": "memory",
            "reasoning": "counting",
            "tag": [],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "validation-00000-of-00001.parquet")
    b = load_benchmark("perceptiontest", tmp_path, videos=tmp_path / "v")
    it = b[0]
    assert it.prompt == (
        "\nQuestion: Is the camera moving or static?\n(A). I don't know\n(B). moving\n(C). static or shaking"
        "\nOnly give the best option."
    )
    assert (it.answer, it.source, it.max_new_tokens) == (
        "C",
        "PerceptionTest/mc_question_val/validation-00000-of-00001.parquet",
        1024,
    )
    assert it.video == str(tmp_path / "v" / "video_10909.mp4")
    assert b.score(it, "C") == 1.0
    assert b.score(it, "(C). static or shaking") == 1.0
    assert b.score(it, "c") == 0.0  # \b([A-D])\b is case-sensitive
    assert b.score(it, "B or C") == 0.0  # first letter
    assert b.score(it, "") == 0.0
    m = b.aggregate([(b[0], "C", 1.0), (b[1], "B", 0.0)])
    assert m["metrics"] == {"accuracy": 50.0}
    assert m["categories"]["area"] == {
        "physics": {"accuracy": 100.0, "count": 1, "answered": 1},
        "memory": {"accuracy": 0.0, "count": 1, "answered": 1},
    }


# --------------------------------------------------------------------------------------------------------
# Charades-STA
# --------------------------------------------------------------------------------------------------------
def test_charades_prompt():
    it = bench("charades")[0]
    assert it.prompt == (
        "Please find the visual event described by a sentence in the video, determining its starting and ending "
        "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
        "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: "
        "person turn a light on.. Please return its start time and end time."
    )
    assert it.answer == [24.3, 30.4]
    assert it.task == "temporal_grounding_charades"


@pytest.mark.parametrize(
    "prediction, span",
    [
        ("12.3 - 20.1 seconds", (12.3, 20.1)),
        ("The event happens in the 12.3-20.1 seconds.", (12.3, 20.1)),
        ("from 3 to 8", (3.0, 8.0)),  # "to" -> "-"
        ("From 3 To 8", (3.0, 8.0)),  # lowercased first
        ("00:00:03 to 00:00:08", (0.0, 3.0)),  # becomes "00:00:03 - 00:00:08": the pair "03 - 00"
        ("8 - 3", (3.0, 8.0)),  # ordered
        ("1 - 2 or 3 - 8", (1.0, 2.0)),  # first pair only
        ("The event starts at 3.\nIt ends at 8.", (3.0, 8.0)),  # keyword sentences, first number each
        ("Start time: 00:00:03\nEnd time: 00:00:08", (0.0, 0.0)),  # the number branch reads "00" first
        ("The event starts at 3 and ends at 8.", None),  # one sentence, one number
        ("3 \u2013 8 seconds", None),  # en dash
        ("The event happens in 2..5 - 7 seconds.", None),  # crashes the original
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_charades_parsing(prediction, span):
    assert parse_span(prediction) == span


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("from 3 to 8", 0.5),  # [3, 8] vs [2, 6]: 3 / 6
        ("00:00:03 to 00:00:08", 1 / 6),  # [0, 3] vs [2, 6]: 1 / 6
        ("The event happens in the 2 - 6 seconds.", 1.0),
        ("3 \u2013 8 seconds", 0.0),  # unparseable -> [16, 26]
        ("2..5 - 7", 0.0),
        ("nothing", 0.0),
    ],
)
def test_charades_iou(prediction, expected):
    b = bench("charades")
    it = replace(b[0], answer=[2.0, 6.0])
    assert b.score(it, prediction) == pytest.approx(expected)


def test_charades_aggregate():
    b = bench("charades")
    rows = [(b[0], "x", 1.0), (b[1], "x", 0.6), (b[2], "x", 0.4), (b[3], None, 0.0)]
    m = b.aggregate(rows)
    # R@t = percent with IoU >= t; mIoU = mean IoU in percent
    assert m["metrics"] == pytest.approx({"R@0.3": 75.0, "R@0.5": 50.0, "R@0.7": 25.0, "mIoU": 50.0})
    assert (m["count"], m["errors"]) == (4, 1)


# --------------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------------
def test_mcq_aggregation_weights():
    b = bench("mvbench")
    t1 = [it for it in b if it.task == "action_antonym"][:4]
    t2 = [it for it in b if it.task == "action_count"][:3]
    wrong = {"A": "B", "B": "C", "C": "A"}
    rows = [
        (t1[0], t1[0].answer, 1.0),
        (t1[1], t1[1].answer, 1.0),
        (t1[2], wrong[t1[2].answer], 0.0),
        (t1[3], "", 0.0),  # empty: leaves the task denominator
        (t2[0], t2[0].answer, 1.0),
        (t2[1], wrong[t2[1].answer], 0.0),
        (t2[2], None, 0.0),  # runner error: answered and wrong
    ]
    m = b.aggregate(rows)
    assert m["tasks"]["action_antonym"] == {"accuracy": pytest.approx(200 / 3), "count": 4, "answered": 3}
    assert m["tasks"]["action_count"] == {"accuracy": pytest.approx(100 / 3), "count": 3, "answered": 3}
    # group: task accuracies weighted by full sample counts (4 and 3): (200/3*4 + 100/3*3) / 7 = 1100/21
    assert m["metrics"]["accuracy"] == pytest.approx(1100 / 21)
    assert (m["count"], m["answered"], m["errors"]) == (7, 6, 1)


def test_videomme_aggregation_counts_empty():
    b = bench("videomme")
    rows = [(b[0], "C", 1.0), (b[1], "", 0.0), (b[2], "A", 0.0), (b[300], "X", 0.0)]
    m = b.aggregate(rows)
    assert m["metrics"]["accuracy"] == pytest.approx(25.0)  # empty is wrong and stays in the denominator
    short = m["categories"]["duration"][b[0].category["duration"]]
    assert short["count"] == sum(1 for it, _, _ in rows if it.category["duration"] == "short")
    assert set(m["categories"]) == {"duration", "domain", "sub_category", "task_type"}


def test_longvideobench_aggregation_is_rounded_fraction():
    b = bench("longvideobench")
    m = b.aggregate([(b[0], "B", 1.0), (b[1], "x", 0.0), (b[2], "y", 1.0)])
    assert m["unit"] == "fraction"
    assert m["metrics"]["accuracy"] == 0.66667  # 2/3 rounded to 5 decimals
    assert "duration_group" in m["categories"] and "question_category" in m["categories"]


def test_lvbench_group_by_type():
    b = bench("lvbench")
    cartoon = [it for it in b if it.task == "cartoon"][:2]
    tv = [it for it in b if it.task == "tv"][:1]
    m = b.aggregate([(cartoon[0], "D", 1.0), (cartoon[1], "", 0.0), (tv[0], "Z", 0.0)])
    assert m["tasks"]["cartoon"] == {"accuracy": 100.0, "count": 2, "answered": 1}
    assert m["metrics"]["accuracy"] == pytest.approx(200 / 3)  # (100*2 + 0*1) / 3
