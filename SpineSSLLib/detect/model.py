"""The detector network (a MONAI 2D U-Net over 2.5D sagittal slice stacks), its typed config
and its model files (a ``SpineSSLLib.checkpoint`` folder: safetensors + JSON, no pickle)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .assign import AssignConfig
from .targets import CHANNELS

TASK = "detect"
BUNDLED = Path(__file__).resolve().parents[1] / "models_data" / "detector"


@dataclass
class DetectorConfig:
    """Architecture, input grid and heatmap geometry of a detector (stored in its model file)."""

    spacing_mm: float = 2.0  # canonical in-plane pixel size
    context: int = 1  # 2.5D: slices k-context .. k+context are the input channels
    channels: tuple[int, ...] = (12, 24, 48, 96, 192, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)  # 5 down-samplings: a receptive field of ~0.5 m
    num_res_units: int = 1
    norm: str = "instance"
    sigma_centre_mm: float = 6.0  # centre map: in-plane width
    sigma_lateral_mm: float = 8.0  # centre map: fall-off across slices
    region_radius_mm: float = 10.0  # level region when a source has no corners
    min_region_mm2: float = 60.0  # smaller predicted regions are not vertebra candidates
    centroid: str = "region"  # in-plane centroid: "region" (mean of the body region) | "centre" (centre-map peak)
    assign: AssignConfig = field(default_factory=AssignConfig)

    def __post_init__(self):
        if isinstance(self.assign, dict):
            self.assign = AssignConfig(**self.assign)
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        if len(self.strides) != len(self.channels) - 1:
            raise ConfigError("detector config: len(strides) must be len(channels) - 1")
        if self.spacing_mm <= 0 or self.context < 0:
            raise ConfigError("detector config: spacing_mm must be > 0 and context >= 0")
        if self.centroid not in ("region", "centre"):
            raise ConfigError(f"detector config: centroid must be 'region' or 'centre', got {self.centroid!r}")

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    @property
    def multiple(self) -> int:
        m = 1
        for s in self.strides:
            m *= s
        return m

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        from ..config import from_dict

        return from_dict(cls, d, "detector")


PRESETS = {
    "default": {},
    # spinessl-detector-synthetic-v1's network (0.5 M parameters, 4 down-samplings): the first stage
    # of scripts/make_detector.sh, fine-tuned (--init) by the second
    "compact": {"channels": (12, 24, 48, 96, 192), "strides": (2, 2, 2, 2)},
    # for tests: trains in seconds on one CPU core
    "tiny": {"channels": (4, 8, 16, 32), "strides": (2, 2, 2), "num_res_units": 0},
}


def build_network(cfg: DetectorConfig, outputs: int | None = None):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=outputs or len(CHANNELS),
                channels=cfg.channels, strides=cfg.strides, num_res_units=cfg.num_res_units, norm=cfg.norm)


def _legacy_network(cfg: DetectorConfig, outputs: list[str]):
    """A network whose model file has a subset of ``CHANNELS`` (e.g. a model made before the
    ``above`` and ``sacrum`` classes: background, T12..S1, centre): its outputs are placed at
    their ``CHANNELS`` positions, the classes it lacks get a logit of -1e4 (probability 0 after
    the class softmax), so inference reads it like a current model."""
    import torch

    net = build_network(cfg, len(outputs))
    index = [CHANNELS.index(n) for n in outputs]

    class LegacyOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("index", torch.tensor(index), persistent=False)

        def forward(self, x):
            y = self.net(x)
            out = y.new_full((y.shape[0], len(CHANNELS)) + tuple(y.shape[2:]), -1e4)
            out[:, self.index] = y
            return out

    return net, LegacyOutputs()


ARCHITECTURE = ("spacing_mm", "context", "channels", "strides", "num_res_units", "norm")
"""The ``DetectorConfig`` fields that shape the network's weights (what ``--init`` inherits)."""
NEW_CLASS_SOURCE = {"above": "T12", "sacrum": "S1"}
"""Classes a model made before them lacks start from their anatomical neighbour's weights."""


def init_from_model(net, path=None, new_class_offset: float = -2.0) -> dict:
    """Start ``net`` (a network of this version's outputs, with the architecture of the model at
    ``path``: see ``architecture_of``) from that model's weights (default: the bundled model) —
    fine-tuning instead of training from scratch.  Weights of equal shape are copied; where the
    source lacks an output class (a model made before *above* / *sacrum*) the class starts as a
    copy of ``NEW_CLASS_SOURCE``'s with its final bias lowered by ``-new_class_offset`` (so it is
    not yet preferred) and contributes nothing as an input of a later layer.  Returns the source
    model's checkpoint metadata."""
    import torch

    from .. import checkpoint as ckpt

    p = _init_folder(path)
    state, meta = ckpt.load_weights(p)
    outputs = list(meta["config"].get("outputs", []))
    if not set(outputs) <= set(CHANNELS):
        raise CheckpointError("--init: the model's outputs are not this version's detector classes", p)
    src = [outputs.index(c) if c in outputs else outputs.index(NEW_CLASS_SOURCE[c]) for c in CHANNELS]
    new = [c for c, name in enumerate(CHANNELS) if name not in outputs]
    own = net.state_dict()
    out, last_bias = {}, None
    for k, v in state.items():
        if k not in own:
            raise CheckpointError(f"--init: weight {k} is not in this network (another architecture)", p)
        t = own[k]
        if tuple(t.shape) == tuple(v.shape):
            out[k] = v
            continue
        dims = [d for d in range(v.dim()) if v.shape[d] == len(outputs) and t.shape[d] == len(CHANNELS)]
        if not dims or any(v.shape[d] != t.shape[d] for d in range(v.dim()) if d not in dims):
            raise CheckpointError(f"--init: weight {k} has shape {tuple(v.shape)}, this network "
                                  f"{tuple(t.shape)} (another architecture)", p)
        module = net.get_submodule(k.rsplit(".", 1)[0])
        out_dim = 1 if isinstance(module, torch.nn.modules.conv._ConvTransposeNd) and v.dim() > 1 else 0
        w = v
        for d in dims:  # every class takes its source class's weights ...
            w = w.index_select(d, torch.tensor(src))
        w = w.clone()
        for d in dims:  # ... but a new class is not yet an input of the layers after it
            if d != out_dim and new:
                w.index_fill_(d, torch.tensor(new), 0.0)
        if w.dim() == 1:
            last_bias = k
        out[k] = w
    if last_bias is not None and new:
        out[last_bias][new] += new_class_offset
    missing = [k for k in own if k not in out]
    if missing:
        raise CheckpointError(f"--init: the model has no weight {missing[0]} (another architecture)", p)
    net.load_state_dict(out)
    return meta


def architecture_of(path=None) -> dict:
    """The architecture fields (``ARCHITECTURE``) of the detector model at ``path`` (default: bundled)."""
    from .. import checkpoint as ckpt

    conf = ckpt.read_meta(_init_folder(path))["config"]
    return {k: conf["detector"][k] for k in ARCHITECTURE if k in conf.get("detector", {})}


def _init_folder(path) -> Path:
    """The detector model folder ``--init`` names (``bundled`` or None: the bundled model)."""
    from .. import checkpoint as ckpt

    p = BUNDLED if path in (None, "bundled") else resolve_model_path(path)
    if ckpt.read_meta(p).get("config", {}).get("task") != TASK:
        raise CheckpointError("--init needs a detector model folder", p)
    return p


def checkpoint_config(cfg: DetectorConfig, extra: dict | None = None) -> dict:
    d = {"task": TASK, "detector": cfg.to_dict(), "outputs": list(CHANNELS)}
    if extra:
        d.update(extra)
    return d


@dataclass
class Detector:
    config: DetectorConfig
    network: object  # torch.nn.Module, in eval mode
    meta: dict
    path: Path
    calibration: object = None  # calibrate.Calibration from the model folder's calibration.json


def resolve_model_path(path) -> Path:
    """A model folder: ``path`` itself, or its ``best/`` / ``last/`` (a detect-train output)."""
    from .. import checkpoint as ckpt

    p = Path(path)
    if ckpt.exists(p):
        return p
    for sub in ("best", "last"):
        if ckpt.exists(p / sub):
            return p / sub
    raise CheckpointError("not a detector model (no checkpoint.json here or in best/ or last/)", p)


def load_detector(path=None, device: str = "cpu") -> Detector:
    """Load a detector model folder (default: the bundled model)."""
    from .. import checkpoint as ckpt

    if path is None:
        if not ckpt.exists(BUNDLED):
            raise CheckpointError("the bundled detector model is not installed; train one with "
                                  "`spine-ssl detect-train` and pass --model", BUNDLED)
        p = BUNDLED
    else:
        p = resolve_model_path(path)
    meta = ckpt.read_meta(p)
    conf = meta.get("config", {})
    if conf.get("task") != TASK:
        raise CheckpointError(f"model was made for task {conf.get('task')!r}, not detection", p)
    outputs = list(conf.get("outputs", []))
    if outputs != list(CHANNELS) and not (outputs and outputs[-1] == "centre" and set(outputs) <= set(CHANNELS)):
        raise CheckpointError("model outputs do not match this version's detector channels", p)
    cfg = DetectorConfig.from_dict(conf["detector"])
    if outputs == list(CHANNELS):
        net = inner = build_network(cfg)
    else:  # a model made before the current channels (e.g. without "above" / "sacrum")
        inner, net = _legacy_network(cfg, outputs)
    ckpt.load_checkpoint(p, inner, device="cpu")
    net.to(device).eval()
    from .calibrate import CALIBRATION_FILE, load_calibration

    cal = load_calibration(p / CALIBRATION_FILE) if (p / CALIBRATION_FILE).is_file() else None
    return Detector(cfg, net, meta, p, cal)
