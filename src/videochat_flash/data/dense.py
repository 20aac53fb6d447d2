"""Per-patch labels of synthetic clips, for pre-training the vision tower with dense supervision.

The demo model has no pretrained UMT to start from (the real one is distilled from CLIP on millions of
videos). Training the tower only through a from-scratch LLM gives it almost no gradient (measured: vision-tower
grad norm 2e-4 against 0.14 at the LM head) and it learned colour but not shape or motion within the CPU hour.
Since every pixel of a synthetic clip is known, each patch token can instead be told directly what covers it:

- ``color``, ``shape``: the object's colour and shape (``background`` where no object covers the patch);
- ``motion``: its direction where it moves (``still`` for the NIAH needle; `UNLABELLED` for an object standing
  still: there is no direction to see);
- ``onset``: when it first appears relative to the clip (``earlier`` = before the clip's first frame, else
  the clip frame it appears on) — ToMe output order carries no time, so order questions need it in the features;
- ``count`` (one label per clip): how many distinct objects the clip shows.

A patch belongs to the object covering the largest share of it if that share is at least ``min_cover``.
Clips are rendered in memory (no mp4), with the chroma of H.264's yuv420p simulated so colours at object edges
look like what the decoded training videos show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .shapes import (
    COLORS,
    DIRECTIONS,
    MOTION_STYLE,
    NEEDLE_BACKGROUND,
    NEEDLE_COLORS,
    SHAPES,
    STYLE,
    Scene,
    SceneStyle,
    needle_frame,
    paste_shape,
    render_frame,
    sample_scene,
)

COLOR_CLASSES: tuple[str, ...] = ("background", *COLORS)
SHAPE_CLASSES: tuple[str, ...] = ("background", *SHAPES)
MOTION_CLASSES: tuple[str, ...] = ("background", *DIRECTIONS, "still")
MAX_CLIP_FRAMES = 4
ONSET_CLASSES: tuple[str, ...] = ("background", "earlier", *(f"frame {i}" for i in range(MAX_CLIP_FRAMES)))
PATCH_HEADS: dict[str, tuple[str, ...]] = {
    "color": COLOR_CLASSES,
    "shape": SHAPE_CLASSES,
    "motion": MOTION_CLASSES,
    "onset": ONSET_CLASSES,
}
MAX_COUNT = 6  # count classes 0..MAX_COUNT-1 objects in a clip
UNLABELLED = -100  # no label for this head (cross-entropy's ignore_index); its patches count neither way
MIN_MOVE_PX = 1.0  # an object that moves less than this across the frames a clip shows has no direction label

# Scene kinds of the mixture: (probability, seconds range, objects range [lo, hi), radius scale).
# They mirror the generator's pools (single / short / long) so the tower sees what the LLM stages will.
SCENE_KINDS: dict[str, tuple[float, tuple[float, float], tuple[int, int], float]] = {
    "single": (0.25, (4.0, 16.0), (1, 2), 1.6),
    "short": (0.45, (4.0, 16.0), (1, 5), 1.0),
    "long": (0.30, (16.0, 48.0), (2, 6), 1.0),
}
# The motion warm-up's scenes (`sample_scene(kind="motion")`): 1-2 objects moving on every frame of one clip, at
# the style's speed or, for a style that spreads moves over the visibility window, `MOTION_STYLE`'s.
MOTION_KIND = (1.0, (4.0, 4.0), (1, 3), 1.0)


@dataclass
class DenseClip:
    frames: np.ndarray  # [T, S, S, 3] uint8, what the encoder sees (before its own resize / normalisation)
    owner: np.ndarray  # [T, S, S] int16: index into ``objects`` covering each pixel, -1 = background
    objects: list[dict]  # {"color", "shape", "motion", "onset"} class indices per object
    count: int  # distinct objects visible in the clip


def simulate_yuv420(frames: np.ndarray) -> np.ndarray:
    """RGB -> BT.601 YCbCr with 2x2-averaged chroma -> RGB: the colour bleeding of a decoded yuv420p video."""
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    t, h, w = y.shape

    def subsample(c: np.ndarray) -> np.ndarray:
        c = c[:, : h - h % 2, : w - w % 2].reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)

    out = frames.astype(np.float32).copy()
    hh, ww = h - h % 2, w - w % 2
    cb_s, cr_s = subsample(cb), subsample(cr)
    yy = y[:, :hh, :ww]
    out[:, :hh, :ww, 0] = yy + 1.402 * cr_s
    out[:, :hh, :ww, 1] = yy - 0.344136 * cb_s - 0.714136 * cr_s
    out[:, :hh, :ww, 2] = yy + 1.772 * cb_s
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _onset_class(start_frame: int, clip_start: int) -> int:
    if start_frame < clip_start:
        return ONSET_CLASSES.index("earlier")
    if start_frame - clip_start >= MAX_CLIP_FRAMES:
        return 0  # appears after the clip: no patch of the clip carries this label
    return ONSET_CLASSES.index(f"frame {start_frame - clip_start}")


def _owner_map(scene: Scene, frame: int) -> np.ndarray:
    owner = np.full((scene.size, scene.size), -1, dtype=np.int16)
    for k, o in enumerate(scene.objects):
        if o.visible(frame):
            cx, cy = o.position(frame)
            paste_shape(owner, o.shape, o.radius, k, cx, cy)
    return owner


def sample_dense_clips(
    rng: np.random.Generator,
    size: int = 64,
    num_frames: int = MAX_CLIP_FRAMES,
    needle_prob: float = 0.1,
    max_clips: int = 1,
    motion_only: bool = False,
    style: SceneStyle = STYLE,
) -> list[DenseClip]:
    """Up to ``max_clips`` distinct clips of ``num_frames`` consecutive 1 fps frames from one scene.

    The scene is drawn like the generator's pools (`SCENE_KINDS`), or with ``motion_only`` as `MOTION_KIND`
    (1-2 objects moving on every frame; no needles). Clips start on multiples of ``num_frames``
    (the model cuts sampled frames into aligned clips). Each clip, with probability ``needle_prob``, has a run
    of 1–``num_frames`` frames replaced by an NIAH needle. Several clips per scene amortise the scene sampling
    (its overlap rejection dominates the cost).
    """
    if not 1 <= num_frames <= MAX_CLIP_FRAMES:
        raise ValueError(f"num_frames must be in 1..{MAX_CLIP_FRAMES}, got {num_frames}")
    if motion_only:
        kind, (_, (lo, hi), (n_lo, n_hi), scale) = "motion", MOTION_KIND
        needle_prob = 0.0
        style = replace(style, speed=style.speed or MOTION_STYLE.speed)
    else:
        names = list(SCENE_KINDS)
        kind = names[int(rng.choice(len(names), p=[SCENE_KINDS[n][0] for n in names]))]
        _, (lo, hi), (n_lo, n_hi), scale = SCENE_KINDS[kind]
    scene = sample_scene(
        rng,
        duration=float(np.round(rng.uniform(lo, hi))),
        fps=1.0,
        size=size,
        num_objects=int(rng.integers(n_lo, n_hi)),
        kind="short" if kind == "single" else kind,
        scale=scale,
        style=style,
    )
    n_clips = max(1, scene.num_frames // num_frames)
    starts = rng.permutation(n_clips)[:max_clips] * num_frames
    return [scene_clip(rng, scene, int(start), num_frames, needle_prob) for start in starts]


def scene_clip(
    rng: np.random.Generator,
    scene: Scene,
    start: int,
    num_frames: int = MAX_CLIP_FRAMES,
    needle_prob: float = 0.0,
) -> DenseClip:
    """The clip of ``scene`` starting on frame ``start`` (frames past the end repeat the last), labelled."""
    ids = [min(start + i, scene.num_frames - 1) for i in range(num_frames)]
    frames = np.stack([render_frame(scene, i) for i in ids])
    owner = np.stack([_owner_map(scene, i) for i in ids])
    objects = [
        {
            "color": COLOR_CLASSES.index(o.color),
            "shape": SHAPE_CLASSES.index(o.shape),
            "motion": MOTION_CLASSES.index(o.direction) if _moves(o, ids) else UNLABELLED,
            "onset": _onset_class(o.start_frame, start),
        }
        for o in scene.objects
    ]
    if rng.random() < needle_prob:
        _insert_needle(rng, frames, owner, objects, scene.size)
    visible = np.unique(owner[owner >= 0])
    return DenseClip(
        frames=simulate_yuv420(frames), owner=owner, objects=objects, count=min(len(visible), MAX_COUNT - 1)
    )


def _moves(obj, frame_ids: list[int]) -> bool:
    """Whether ``obj`` visibly moves across the frames of ``frame_ids`` that show it; an object shown on one of
    them is compared with its position on the scene's next (else previous) frame."""
    shown = [i for i in frame_ids if obj.visible(i)]
    if len(shown) == 1:
        after = shown[0] + 1 if obj.visible(shown[0] + 1) else shown[0] - 1
        shown = sorted([shown[0], after]) if obj.visible(after) else []
    if len(shown) < 2:
        return False
    (xa, ya), (xb, yb) = obj.position(shown[0]), obj.position(shown[-1])
    return float(np.hypot(xb - xa, yb - ya)) >= MIN_MOVE_PX


def _insert_needle(rng, frames: np.ndarray, owner: np.ndarray, objects: list[dict], size: int) -> None:
    t = frames.shape[0]
    length = int(rng.integers(1, t + 1))
    first = int(rng.integers(0, t - length + 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = NEEDLE_COLORS[int(rng.integers(len(NEEDLE_COLORS)))]
    frame = needle_frame(size, shape, color)
    k = len(objects)
    mask = np.any(frame != np.asarray(NEEDLE_BACKGROUND, dtype=np.uint8), axis=-1)
    for i in range(first, first + length):
        frames[i] = frame
        owner[i] = np.where(mask, k, -1)
    objects.append(
        {
            "color": COLOR_CLASSES.index(color),
            "shape": SHAPE_CLASSES.index(shape),
            "motion": MOTION_CLASSES.index("still"),
            "onset": _onset_class(first, 0),
        }
    )


def patch_owner(owner: np.ndarray, image_size: int, patch: int, min_cover: float = 0.25) -> np.ndarray:
    """`[T, g, g]` object index per patch of the encoder's ``image_size`` frames (-1 = background).

    The owner map is resized (nearest) to ``image_size`` like the frames are resized (bicubic) by the model.
    """
    t, s, _ = owner.shape
    idx = (np.arange(image_size) * s) // image_size
    big = owner[:, idx][:, :, idx]
    g = image_size // patch
    big = big[:, : g * patch, : g * patch].reshape(t, g, patch, g, patch)
    n_obj = int(owner.max()) + 1
    if n_obj == 0:
        return np.full((t, g, g), -1, dtype=np.int64)
    cover = np.stack([(big == k).mean(axis=(2, 4)) for k in range(n_obj)])  # [K, T, g, g]
    best = cover.argmax(axis=0)
    return np.where(cover.max(axis=0) >= min_cover, best, -1).astype(np.int64)


def patch_labels(clip: DenseClip, image_size: int, patch: int) -> dict[str, np.ndarray]:
    """Class index per patch for every head of `PATCH_HEADS` (`[T, g, g]` each; 0 = background)."""
    return owner_labels(clip.objects, patch_owner(clip.owner, image_size, patch))


def owner_labels(objects: list[dict], who: np.ndarray) -> dict[str, np.ndarray]:
    """Class index per patch for every head, from `patch_owner`'s object index per patch (-1 -> 0; an object's
    `UNLABELLED` head stays so on its patches)."""
    out = {}
    for head in PATCH_HEADS:
        table = np.array([0] + [o[head] for o in objects], dtype=np.int64)
        out[head] = table[who + 1]
    return out


__all__ = [
    "COLOR_CLASSES",
    "MAX_COUNT",
    "MOTION_CLASSES",
    "ONSET_CLASSES",
    "PATCH_HEADS",
    "SHAPE_CLASSES",
    "UNLABELLED",
    "DenseClip",
    "owner_labels",
    "patch_labels",
    "patch_owner",
    "sample_dense_clips",
    "scene_clip",
    "simulate_yuv420",
]
