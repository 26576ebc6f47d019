"""Errors a user can act on: the CLI prints their message on one line and exits with status 2."""


class SwinV2ServeError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(SwinV2ServeError, ValueError):
    """An unknown model name or a geometry the model cannot take (image size, window)."""


class CheckpointError(SwinV2ServeError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class ImageDecodeError(SwinV2ServeError, ValueError):
    """Bytes that are not a decodable image (corrupt, truncated, too large, not an image)."""


class ExportError(SwinV2ServeError, RuntimeError):
    """An export or verification step failed."""


class BackendUnavailableError(SwinV2ServeError, RuntimeError):
    """A runtime backend (TensorRT, CUDA, OpenVINO ...) is not installed or has no device here."""


class ServerError(SwinV2ServeError, RuntimeError):
    """The inference server is unreachable, not ready, or rejected a request."""


class DatasetError(SwinV2ServeError, ValueError):
    """A data directory that cannot be trained on (missing, empty, fewer than two classes)."""
