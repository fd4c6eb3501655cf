"""SpineSSLLib: the Slicer-independent backend of the SpineSSL extension.

Pipeline modules (each one concept): ``io`` -> ``levels`` -> ``extract`` -> ``data`` ->
``models`` -> ``train`` -> ``evaluate`` -> ``scene``.  Importing the package imports nothing
heavy: torch, pydicom and friends are imported by the modules that need them.
"""

__version__ = "0.1.0"

LEVEL_NAMES = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
"""Vertebral-body levels handled by SpineSSL, superior to inferior."""

DISC_NAMES = tuple(f"{a}-{b}" for a, b in zip(LEVEL_NAMES[:-1], LEVEL_NAMES[1:]))
"""Intervertebral discs T12-L1 ... L5-S1, superior to inferior."""
