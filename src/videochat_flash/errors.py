"""Exceptions a user can cause. Each carries one line that names the problem; the CLI prints just that line."""


class VideoChatFlashError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(VideoChatFlashError, ValueError):
    """A config.json / recipe field has a value we do not support."""


class CheckpointError(VideoChatFlashError):
    """A checkpoint directory is missing files, keys, or has tensors of the wrong shape."""
