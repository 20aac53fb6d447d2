"""videochat-flash: long-video understanding with VideoChat-Flash.

The public face is `VideoChatFlash` (load a checkpoint, encode videos, ask questions) and `VideoTokens`
(an encoded video, reusable across questions). Both are imported lazily so that `videochat_flash.video`
works without importing torch.
"""

__version__ = "0.1.0"

__all__ = ["VideoChatFlash", "VideoTokens", "__version__"]


def __getattr__(name: str):
    if name == "VideoChatFlash":
        from .model.videochat import VideoChatFlash

        return VideoChatFlash
    if name == "VideoTokens":
        from .inference.tokens import VideoTokens

        return VideoTokens
    raise AttributeError(f"module 'videochat_flash' has no attribute {name!r}")
