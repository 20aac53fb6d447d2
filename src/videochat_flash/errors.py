"""Exceptions a user can cause. Each carries one line that names the problem; the CLI prints just that line."""


class VideoChatFlashError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(VideoChatFlashError, ValueError):
    """A config.json / recipe field has a value we do not support."""


class CheckpointError(VideoChatFlashError):
    """A checkpoint directory is missing files, keys, or has tensors of the wrong shape."""


def read_json_object(path, what: str) -> dict:
    """Read a JSON file that must hold an object; every failure is a `ConfigError` naming ``what`` and the path."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data
