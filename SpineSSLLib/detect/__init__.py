"""Automatic vertebra detection and level labelling (``spine-ssl detect-train``, ``spine-ssl detect``).

Modules (one concept each; heavy imports stay inside them):

- ``assign``   anatomy-respecting level assignment on heatmaps (pure numpy): peaks, an ordered
               chain from the sacrum upward, one instance per level, gaps, confidences.
- ``grid``     the detector's canonical sagittal grid (fixed mm spacing, rows inferior,
               columns posterior) and resampling of a ``Scan`` onto it.
- ``targets``  training targets (heatmaps) from a ``LevelSet``.
- ``model``    the MONAI U-Net, its config, and safetensors + JSON model files.
- ``training`` training the detector from any level source (``spine-ssl detect-train``).
- ``infer``    running a model on a scan and building a ``LevelSet`` (``spine-ssl detect``).
- ``evaluate`` held-out evaluation: centroid error per level, labelling accuracy, JSON + PNG.
- ``spinenet`` the optional SpineNet detector, used only when the user has installed it.
"""
