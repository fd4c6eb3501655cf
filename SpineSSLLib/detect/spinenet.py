"""The optional SpineNet detector (``spine-ssl detect --detector spinenet``).

SpineNet V2 (Windsor, Jamaludin, Kadir, Zisserman) is a separate, non-commercially licensed
package.  SpineSSL never ships its code or weights: when the user has installed it (``pip install
spinenet`` and its weights via ``spinenet.download_weights()``), its detection and labelling are
turned into a ``LevelSet`` by ``SpineSSLLib.levels.from_spinenet``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, SpineSSLError
from ..io import Scan

HOW_TO_GET = ("SpineNet is not installed: install it yourself with `pip install spinenet` and download "
              "its weights with `python -c \"import spinenet; spinenet.download_weights()\"` (its licence "
              "is non-commercial; SpineSSL does not ship it), or use the built-in detector (--detector detect)")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("spinenet") is not None


def load(device: str = "cpu"):
    """A ``spinenet.SpineNet`` instance (raises ``ConfigError`` with instructions when absent)."""
    if not available():
        raise ConfigError(HOW_TO_GET)
    import spinenet

    try:
        return spinenet.SpineNet(device=device, verbose=False, scan_type="lumbar")
    except Exception as e:  # missing weights, incompatible version ...: one clear line
        raise ConfigError(f"SpineNet is installed but could not start ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); did you run "
                          f"spinenet.download_weights()?") from e


def detect_scan(net, scan: Scan, where: str = "spinenet"):
    """Run SpineNet on ``scan`` and convert its output to a ``LevelSet``."""
    from ..levels import from_spinenet

    volume = np.ascontiguousarray(scan.array.transpose(1, 2, 0))  # rows x columns x sagittal slices
    sp = scan.spacing
    try:
        vert_dicts = net.detect_vb(volume, [float(sp[1]), float(sp[0])])  # (row, column) spacing
    except Exception as e:
        raise SpineSSLError(f"SpineNet failed on this scan ({type(e).__name__}: {str(e)[:160]})", where) from e
    return from_spinenet(vert_dicts, scan, where=where)
