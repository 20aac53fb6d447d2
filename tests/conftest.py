from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
REFERENCE = FIXTURES / "reference"


def require_fixtures(path: Path = FIXTURES) -> Path:
    """Return `path`, or skip the calling test when ../shared/fixtures is absent (never the case in CI)."""
    if not path.exists():
        pytest.skip(f"fixtures not found at {path}")
    return path


@pytest.fixture
def reference_dir() -> Path:
    return require_fixtures(REFERENCE)


def write_test_video(
    path: Path, seconds: float = 12.0, fps: int = 4, size: tuple[int, int] = (48, 64), codec: str = "libx264"
) -> Path:
    """A small H.264 video whose frame k is a flat grey level that encodes k (survives compression)."""
    import av
    import numpy as np

    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(int(seconds * fps)):
            frame = np.full((height, width, 3), (k * 5) % 256, dtype=np.uint8)
            frame[: height // 4, : width // 4] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from videochat_flash.model.factory import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny", seed=7)


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("videos") / "small.mp4")
