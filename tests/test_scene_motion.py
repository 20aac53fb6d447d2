"""How synthetic objects move (`data.shapes.SceneStyle`) and the direction labels the tower learns from (its motion
warm-up is tested in tests/test_vision_pretrain.py)."""

import numpy as np
import pytest
import torch

from videochat_flash.data.dense import (
    MOTION_CLASSES,
    UNLABELLED,
    sample_dense_clips,
    scene_clip,
)
from videochat_flash.data.shapes import (
    BACKGROUNDS,
    MOTION_STYLE,
    STYLE,
    SceneStyle,
    frames_for,
    make_background,
    object_position,
    sample_scene,
)
from videochat_flash.train.vision_pretrain import dense_losses


def _scenes(style: SceneStyle, kind: str = "short", n: int = 40, seed: int = 0, seconds: float = 12.0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield sample_scene(rng, duration=seconds, fps=1.0, size=64, num_objects=3, kind=kind, style=style)


def test_objects_move_at_their_speed_then_stand_still():
    lo, hi = MOTION_STYLE.speed
    checked = 0
    for scene in _scenes(MOTION_STYLE):
        for o in scene.objects:
            track = np.array([o.position(i) for i in range(o.start_frame, o.end_frame)])
            steps = np.hypot(*np.diff(track, axis=0).T)
            moving = steps[: o.move_frames]  # fewer when the object leaves before its move is done
            assert ((moving >= lo * 64 - 1e-6) & (moving <= hi * 64 + 1e-6)).all()
            assert np.allclose(moving, moving[:1])  # constant speed
            assert np.allclose(steps[o.move_frames :], 0)  # done: still
            dx, dy = track[-1] - track[0]
            axis = {"left": -dx, "right": dx, "up": -dy, "down": dy}[o.direction]
            assert axis == pytest.approx(np.hypot(dx, dy)) and axis > 0
            checked += 1
    assert checked > 60


SPREAD_STYLE = SceneStyle()  # the dataclass defaults: the look of the demo models up to session 18


def test_generator_draws_the_motion_style():
    assert STYLE == MOTION_STYLE == SceneStyle(background="dark", speed=(0.08, 0.12))
    assert SPREAD_STYLE == SceneStyle(background="mid", speed=None)


def test_spread_style_moves_over_the_whole_window_and_old_json_reads_the_same():
    for scene in _scenes(SPREAD_STYLE, n=10):
        for o in scene.objects:
            assert o.move_frames == 0
            obj = o.to_json()
            del obj["move_frames"]  # annotations written before the field existed
            last = o.end_frame - 1
            assert object_position(obj, last) == pytest.approx((obj["x1"], obj["y1"]), abs=0.01)
            if last - o.start_frame >= 2:  # strictly between the ends half way through the window
                mid = object_position(obj, (o.start_frame + last) / 2)
                assert mid == pytest.approx(
                    ((obj["x0"] + obj["x1"]) / 2, (obj["y0"] + obj["y1"]) / 2), abs=0.01
                )


def test_motion_scenes_show_every_object_moving_on_every_frame():
    for scene in _scenes(MOTION_STYLE, kind="motion", n=20, seconds=4.0):
        assert 1 <= len(scene.objects) <= 3
        for o in scene.objects:
            assert (o.start_frame, o.end_frame) == (0, scene.num_frames)
            assert o.move_frames >= scene.num_frames - 1


def test_backgrounds_and_style_validation():
    rng = np.random.default_rng(0)
    for kind, (lo, hi) in BACKGROUNDS.items():
        means = [make_background(rng, 32, kind).mean() for _ in range(20)]
        assert lo - 15 < min(means) and max(means) < hi + 15
    with pytest.raises(ValueError, match="background"):
        SceneStyle(background="pink")
    with pytest.raises(ValueError, match="speed"):
        SceneStyle(speed=(0.2, 0.1))
    with pytest.raises(ValueError, match="'motion' needs a style with a speed"):
        next(_scenes(SceneStyle(speed=None), kind="motion"))


def _shown_move(o, start: int) -> float | None:
    """How far ``o`` moves over the clip's frames that show it (one shown frame: to its neighbour frame)."""
    shown = [i for i in range(start, start + 4) if o.visible(i)]
    if len(shown) == 1:
        f = shown[0]
        neighbour = f + 1 if o.visible(f + 1) else f - 1
        shown = [f, neighbour] if o.visible(neighbour) else [f]
    if not shown:
        return None
    (xa, ya), (xb, yb) = o.position(shown[0]), o.position(shown[-1])
    return float(np.hypot(xb - xa, yb - ya))


@pytest.mark.parametrize("style", [SPREAD_STYLE, MOTION_STYLE], ids=["spread", "motion"])
def test_direction_labels_only_where_the_object_moves(style):
    rng = np.random.default_rng(3)
    seen = {"moving": 0, "still": 0}
    for _ in range(30):
        scene = sample_scene(rng, duration=16.0, fps=1.0, size=64, num_objects=2, kind="short", style=style)
        for start in range(0, frames_for(16.0, 1.0), 4):
            clip = scene_clip(rng, scene, start)
            for o, labels in zip(scene.objects, clip.objects, strict=True):
                moved = _shown_move(o, start)
                if moved is None:
                    continue
                if moved >= 1:
                    assert labels["motion"] == MOTION_CLASSES.index(o.direction)
                    seen["moving"] += 1
                else:
                    assert labels["motion"] == UNLABELLED
                    seen["still"] += 1
    # the spread style moves objects on every frame they are on screen: every one has a direction label
    assert seen["moving"] > 20 and (seen["still"] > 20 if style.speed else seen["still"] <= 2)
    for _ in range(10):
        for clip in sample_dense_clips(rng, max_clips=2, motion_only=True):
            assert all(o["motion"] in range(1, 5) for o in clip.objects)


def test_unlabelled_patches_count_neither_as_object_nor_as_background():
    logits = {
        name: torch.zeros(1, 3, n) for name, n in [("color", 6), ("shape", 6), ("motion", 6), ("onset", 6)]
    }
    logits["motion"][0, 2, 0] = 50.0  # a confident, wrong "background" on the unlabelled patch
    logits["count"] = torch.zeros(1, 6)
    labels = {name: torch.tensor([[0, 1, 0]]) for name in ("color", "shape", "onset")}
    labels["motion"] = torch.tensor([[0, 1, UNLABELLED]])
    labels["count"] = torch.tensor([1])
    losses = dense_losses(logits, labels)
    assert losses["motion"].item() == pytest.approx(losses["color"].item())
