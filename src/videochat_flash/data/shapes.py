"""Synthetic scenes of moving shapes: sampling (from a numpy Generator) and rendering (pure numpy).

A `Scene` is a textured background plus `SceneObject`s. Each object has a shape, a colour from a small
saturated palette, a size, a motion direction and a visibility window ``[start, end)`` in seconds; it moves in a
straight line from the frame it appears on, over its whole visibility window or (`SceneStyle.speed`) at its own
speed until it has covered its distance, then stands still. Frame ``i`` shows time ``i / fps``.
Objects of one scene never overlap on screen (rejection sampling), and in scenes meant for questions every
object has a distinct colour and a distinct shape, so "the red object" and "the circle" are unambiguous.

Nothing here does I/O; `synth.py` writes the frames to mp4 files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

# Saturated colours that stay distinct after yuv420p chroma subsampling and down-scaling.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 255),
    "yellow": (240, 220, 20),
    "white": (245, 245, 245),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Radius of the circumscribed circle as a fraction of the frame side.
SIZES: dict[str, float] = {"small": 0.14, "big": 0.20}
NEEDLE_RADIUS = 0.36
NEEDLE_BACKGROUND = (235, 235, 235)
NEEDLE_COLORS: tuple[str, ...] = tuple(c for c in COLORS if c != "white")

_UNIT_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
BACKGROUNDS: dict[str, tuple[float, float]] = {"mid": (85.0, 145.0), "dark": (35.0, 75.0)}  # base grey range


@dataclass(frozen=True)
class SceneStyle:
    """How scenes look and move; one style serves the data, the tower's pre-training and the evaluation.

    The dataclass defaults are the look of the demo models up to session 18: a mid-grey background and each
    object's move spread over its whole visibility window (a median 2.7 px per frame at 1 fps). A from-scratch tower
    learned an object's direction only from ~4 px (half a patch) per sampled frame on, on backgrounds far from the
    encoder's normalisation mean (`benchmarks/README.md`, motion probe); `MOTION_STYLE` gives it that, and is the
    generator's `STYLE`: the tower's held-out direction rose from 32% to 74% (`benchmarks/README.md`, "Faster
    movers on dark backgrounds").
    """

    background: str = "mid"  # a key of BACKGROUNDS
    speed: tuple[float, float] | None = None  # frame sides per second, drawn per object; None: spread the move

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; known: {list(BACKGROUNDS)}")
        if self.speed is not None and not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be 0 < lo <= hi frame sides per second, got {self.speed}")


# objects move 8-12% of the frame side per second until they have covered their distance, then stand still
MOTION_STYLE = SceneStyle(background="dark", speed=(0.08, 0.12))
STYLE = MOTION_STYLE  # what the generator, the tower's pre-training and the evaluation draw


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    radius: int  # px, circumscribed
    direction: str
    start: float  # seconds, visible on frames with start <= i/fps < end
    end: float
    start_frame: int
    end_frame: int  # exclusive
    x0: float  # centre (px) on start_frame
    y0: float
    x1: float  # centre (px) once the move is done
    y1: float
    move_frames: int = 0  # frames the move takes from start_frame (0: the whole visibility window)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def visible(self, frame: int) -> bool:
        return self.start_frame <= frame < self.end_frame

    def position(self, frame: int) -> tuple[float, float]:
        return object_position(vars(self), frame)  # its fields as they are (asdict deep-copies: slow per frame)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("x0", "y0", "x1", "y1"):
            d[k] = round(d[k], 2)
        return d


def _move_span(start_frame: int, end_frame: int, move_frames: int) -> int:
    """Frames from the first position to the last: the move's own, else the whole visibility window."""
    return max(1, move_frames if move_frames else end_frame - 1 - start_frame)


def object_position(obj: dict, frame: int) -> tuple[float, float]:
    """Centre (x, y) in pixels of a serialised object (``record["meta"]["objects"][k]``) on ``frame``."""
    # annotations written before ``move_frames`` existed spread every move over the window
    span = _move_span(obj["start_frame"], obj["end_frame"], obj.get("move_frames", 0))
    a = min(1.0, max(0.0, (frame - obj["start_frame"]) / span))
    return obj["x0"] + a * (obj["x1"] - obj["x0"]), obj["y0"] + a * (obj["y1"] - obj["y0"])


@dataclass
class Scene:
    duration: float  # seconds
    fps: float
    size: int  # frame side in px (square frames)
    objects: list[SceneObject]
    background: np.ndarray = field(repr=False)  # [size, size, 3] uint8

    @property
    def num_frames(self) -> int:
        return frames_for(self.duration, self.fps)

    def meta(self) -> dict:
        return {
            "duration": self.duration,
            "fps": self.fps,
            "size": self.size,
            "num_frames": self.num_frames,
            "objects": [o.to_json() for o in self.objects],
        }


def frames_for(seconds: float, fps: float) -> int:
    """Index of the first frame at or after ``seconds`` (= number of frames before it)."""
    return max(0, math.ceil(seconds * fps - 1e-6))


# --------------------------------------------------------------------------------------------- shapes


def _polygon_mask(points: np.ndarray, n: int, r: float) -> np.ndarray:
    """Even-odd fill of a polygon (centre-relative coordinates) sampled at pixel centres of an n×n grid."""
    c = (n - 1) / 2
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    xs -= c
    ys -= c
    inside = np.zeros((n, n), dtype=bool)
    px, py = points[:, 0] * r, points[:, 1] * r
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    for ax, ay, bx, by in zip(px, py, qx, qy, strict=True):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        xint = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < xint)
    return inside


@lru_cache(maxsize=256)
def shape_mask(shape: str, radius: int) -> np.ndarray:
    """Boolean mask [2r+1, 2r+1] of ``shape`` with circumscribed radius ``radius`` (px)."""
    n = 2 * radius + 1
    r = float(radius)
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    if shape == "circle":
        m = xs**2 + ys**2 <= (r + 0.25) ** 2
    elif shape == "square":
        h = r * 0.78
        m = (np.abs(xs) <= h) & (np.abs(ys) <= h)
    elif shape == "cross":
        w = r * 0.34
        m = ((np.abs(xs) <= w) & (np.abs(ys) <= r)) | ((np.abs(ys) <= w) & (np.abs(xs) <= r))
    elif shape == "triangle":
        pts = np.array([[0.0, -1.0], [0.95, 0.8], [-0.95, 0.8]])
        m = _polygon_mask(pts, n, r)
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
        m = _polygon_mask(pts, n, r)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m.setflags(write=False)
    return m


def paste_shape(frame: np.ndarray, shape: str, radius: int, color, cx: float, cy: float) -> None:
    """Draw a filled shape centred at (cx, cy) into ``frame`` [H, W, 3] in place, clipped to the frame."""
    mask = shape_mask(shape, radius)
    h, w = frame.shape[:2]
    x0, y0 = int(round(cx)) - radius, int(round(cy)) - radius
    n = mask.shape[0]
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    frame[fy0:fy1, fx0:fx1][sub] = color


# ----------------------------------------------------------------------------------------- background


def _bilinear_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample [h, w, C] to [size, size, C] with bilinear interpolation (align corners)."""
    h, w = grid.shape[:2]
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0 = np.floor(ys).astype(int).clip(0, h - 2)
    x0 = np.floor(xs).astype(int).clip(0, w - 2)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - wy) * (1 - wx) + g01 * (1 - wy) * wx + g10 * wy * (1 - wx) + g11 * wy * wx).astype(
        np.float64
    )


def make_background(rng: np.random.Generator, size: int, kind: str = "mid") -> np.ndarray:
    """Low-saturation texture: a base tint (`BACKGROUNDS` grey range), smooth blobs and fine static grain.

    ``"mid"`` (the demo models' up to session 18) sits near the encoder's normalisation mean, where a from-scratch
    tower never learned motion. On ``"dark"`` the demo's dense pre-training learned shapes as well (98% of held-out
    objects against 99.5%) and motion to 74% (`SceneStyle`).
    """
    base = rng.uniform(*BACKGROUNDS[kind]) + rng.uniform(-12, 12, size=3)
    coarse = rng.uniform(-1, 1, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 1)) * rng.uniform(
        8, 16
    )
    tint = rng.uniform(-1, 1, size=(3, 3, 3)) * 5
    grain = rng.normal(0, rng.uniform(1.5, 4.0), size=(size, size, 1))
    bg = base + _bilinear_upsample(coarse, size) + _bilinear_upsample(tint, size) + grain
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------- sampling


def _quantize(t: float, step: float = 0.5) -> float:
    """Round to the grid (half up, so values >= step apart stay distinct); 0.5 s prints exactly as %.1f."""
    return round(math.floor(t / step + 0.5) * step, 3)


def _place(
    rng: np.random.Generator,
    size: int,
    radius: int,
    direction: str,
    shrink: float = 1.0,
    dist: float | None = None,
) -> tuple[float, float, float, float]:
    """Start/end centres for a straight move in ``direction``, inside the frame: ``dist`` px, by default
    (20–50 % × shrink) of the frame."""
    margin = radius + 2
    lo, hi = margin, size - 1 - margin
    if dist is None:
        dist = rng.uniform(0.2, 0.5) * shrink * size
    dist = min(dist, hi - lo)
    ux, uy = _UNIT_VECTORS[direction]
    # coordinate along the motion axis: start so that start + dist stays inside
    along0 = rng.uniform(lo, hi - dist)
    across = rng.uniform(lo, hi)
    if ux != 0:
        x0 = along0 if ux > 0 else hi - (along0 - lo)
        return x0, across, x0 + ux * dist, across
    y0 = along0 if uy > 0 else hi - (along0 - lo)
    return across, y0, across, y0 + uy * dist


def _track(o: SceneObject, frames: np.ndarray) -> np.ndarray:
    span = _move_span(o.start_frame, o.end_frame, o.move_frames)
    a = np.clip((frames - o.start_frame) / span, 0.0, 1.0)[:, None]
    return np.array([o.x0, o.y0]) + a * np.array([o.x1 - o.x0, o.y1 - o.y0])


def _window_track(o: SceneObject) -> np.ndarray:
    """`_track` over the object's whole visibility window, computed once per object for `_collides`."""
    return _track(o, np.arange(o.start_frame, o.end_frame))


def _collides(a: SceneObject, ta: np.ndarray, b: SceneObject, tb: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` come within their radii + 4 px on a frame both show (``ta``, ``tb``: their
    `_window_track`; each frame's position is computed on its own, so a slice equals the track of those frames)."""
    f0, f1 = max(a.start_frame, b.start_frame), min(a.end_frame, b.end_frame)
    if f0 >= f1:
        return False
    pa, pb = ta[f0 - a.start_frame : f1 - a.start_frame], tb[f0 - b.start_frame : f1 - b.start_frame]
    d = np.linalg.norm(pa - pb, axis=1)
    return bool((d < a.radius + b.radius + 4).any())


def sample_scene(
    rng: np.random.Generator,
    *,
    duration: float,
    fps: float,
    size: int,
    num_objects: int,
    kind: str = "short",
    unique: bool = True,
    scale: float = 1.0,
    style: SceneStyle = STYLE,
) -> Scene:
    """Sample a scene.

    ``kind="short"``: every object is visible for at least half the video and appears in the first half,
    at distinct times (gap ≥ duration/8). ``kind="long"``: objects are events of 4–16 s scattered over
    the whole video with distinct start times (gap ≥ 2 s). ``kind="motion"`` (the tower's motion warm-up): every
    object is on screen and moving on every frame (needs a ``style.speed``). With ``unique`` every object has its
    own colour and its own shape (at most ``len(SHAPES)`` objects). Objects that cannot be placed without
    overlapping the others (60 tries, 4 layouts) are dropped, so ``len(scene.objects)`` may be below
    ``num_objects``.
    ``scale`` multiplies the object radii (the curriculum's first scenes use bigger shapes).
    """
    background = make_background(rng, size, style.background)
    if unique:
        num_objects = min(num_objects, len(SHAPES), len(COLORS))
        shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:num_objects]]
        colors = [COLORS[i] for i in rng.permutation(len(COLORS))[:num_objects]]
    else:
        shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), num_objects)]
        colors = [COLORS[i] for i in rng.integers(0, len(COLORS), num_objects)]

    if kind == "short":
        gap = duration / 8
        slots = np.sort(rng.permutation(5)[:num_objects])
        starts = [_quantize(s * gap) for s in slots]
    elif kind == "long":
        n_slots = max(num_objects, int((duration - 4.0) // 2) + 1)
        slots = np.sort(rng.permutation(n_slots)[:num_objects])
        starts = [float(s) * 2.0 for s in slots]
    elif kind == "motion":
        if style.speed is None:
            raise ValueError("scene kind 'motion' needs a style with a speed (moves spread over the window stay slow)")
        starts = [0.0] * num_objects
    else:
        raise ValueError(f"unknown scene kind {kind!r}")

    best: list[SceneObject] = []
    for _ in range(4):  # whole-layout retries keep the object count (and thus counts) as requested
        objects = _layout(rng, shapes, colors, starts, duration, fps, size, kind, scale, style.speed)
        if len(objects) > len(best):
            best = objects
        if len(best) == num_objects:
            break
    best.sort(key=lambda o: (o.start, o.end))
    return Scene(duration=float(duration), fps=float(fps), size=size, objects=best, background=background)


def _layout(rng, shapes, colors, starts, duration, fps, size, kind, scale, speed) -> list[SceneObject]:
    max_len = min(16.0, max(4.0, duration / 2))
    objects: list[SceneObject] = []
    tracks: list[np.ndarray] = []  # `_window_track` of each placed object
    for shape, color, start in zip(shapes, colors, starts, strict=True):
        if kind == "motion":
            end = duration
        elif kind == "short":
            length = rng.uniform(max(duration / 2, min(2.0, duration)), duration)
            end = duration if rng.random() < 0.5 else min(duration, _quantize(start + length))
        else:
            length = _quantize(rng.uniform(4.0, max_len))
            end = min(duration, start + length)
            if end - start < 2.0:  # an event squeezed against the end of the video
                start = max(0.0, end - 4.0)
        end = max(end, min(duration, start + 1.0))
        # direction and size are drawn once (retrying them would favour parallel motions / small shapes)
        direction = DIRECTIONS[int(rng.integers(0, 4))]
        size_name = "big" if rng.random() < 0.5 else "small"
        radius = max(3, int(round(SIZES[size_name] * scale * size)))
        step = None if speed is None else rng.uniform(*speed) * size / fps  # px per frame
        first, last = frames_for(start, fps), frames_for(end, fps)
        for attempt in range(60):
            dist = step * max(1, last - 1 - first) if kind == "motion" else None
            x0, y0, x1, y1 = _place(rng, size, radius, direction, 1.0 - attempt / 100, dist)
            moved = 0
            if step is not None:  # whole steps of exactly ``step`` px (one shorter step if the path is shorter)
                full = math.hypot(x1 - x0, y1 - y0)
                moved = max(1, math.floor(full / step + 1e-6))
                keep = min(1.0, moved * step / max(full, 1e-9))
                x1, y1 = x0 + (x1 - x0) * keep, y0 + (y1 - y0) * keep
            obj = SceneObject(
                shape=shape,
                color=color,
                size=size_name,
                radius=radius,
                direction=direction,
                start=float(start),
                end=float(end),
                start_frame=first,
                end_frame=last,
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                move_frames=moved,
            )
            if obj.end_frame <= obj.start_frame:
                continue
            track = _window_track(obj)
            if not any(_collides(obj, track, o, t) for o, t in zip(objects, tracks, strict=True)):
                objects.append(obj)
                tracks.append(track)
                break
    return objects


# ------------------------------------------------------------------------------------------- rendering


def render_frame(scene: Scene, i: int) -> np.ndarray:
    frame = scene.background.copy()
    for o in scene.objects:
        if o.visible(i):
            cx, cy = o.position(i)
            paste_shape(frame, o.shape, o.radius, PALETTE[o.color], cx, cy)
    return frame


def render_frames(scene: Scene) -> Iterator[np.ndarray]:
    for i in range(scene.num_frames):
        yield render_frame(scene, i)


def needle_frame(size: int, shape: str, color: str) -> np.ndarray:
    """The NIAH needle: a huge ``color`` ``shape`` on a plain light-grey screen (never seen in haystacks)."""
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:] = NEEDLE_BACKGROUND
    radius = max(4, int(round(NEEDLE_RADIUS * size)))
    c = (size - 1) / 2
    paste_shape(frame, shape, radius, PALETTE[color], c, c)
    return frame
