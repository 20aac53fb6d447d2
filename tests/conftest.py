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
