"""Exception types.  Every error raised on bad user input is a ``SpineSSLError`` whose ``str``
is one line naming the offending file (when there is one) and the cause."""

from __future__ import annotations

import os


class SpineSSLError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.cause = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(SpineSSLError):
    """Invalid option, knob or configuration file."""


class InputError(SpineSSLError):
    """An input file or folder cannot be used (missing, unreadable, wrong kind)."""


class DicomError(InputError):
    """A DICOM file or series cannot be used (truncated, no pixels, mixed series, ...)."""


class GeometryError(InputError):
    """Orientation or spacing unsuitable (non-sagittal, oblique, inconsistent spacing...)."""


class ImageContentError(InputError):
    """Pixel content unusable (NaN/Inf, constant image)."""


class LevelsError(InputError):
    """Vertebra level information missing, inconsistent or unknown."""


class ManifestError(InputError):
    """A manifest or table is malformed or refers to missing files."""


class CheckpointError(InputError):
    """A model file is truncated, unsafe, or was made for another preset."""
