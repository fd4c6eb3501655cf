"""The module's workflow on one volume (extract, show, save), and the models on one scan: the
library's loaders (``grading.load_grading_model``, ``pretrain.load_pretrained``) adapted to the
results table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import Scan
from ..levels import LevelSet, prepared_levels  # noqa: F401 - prepared_levels: re-exported by the scene
from .markups import markups_from_levels, save_markups
from .nodes import LEVELS_SUFFIX, PLOT_SUFFIX, SEGMENTATION_SUFFIX, TABLE_SUFFIX
from .results import (StructureResult, _n_classes, grade_color_table, plot_from_table, save_table,
                      table_from_results)
from .segmentation import save_segmentation, segmentation_from_shapes, structure_shapes
from .volumes import scan_from_volume_node

# --------------------------------------------------------------------------------------------
# the module's workflow on one volume (used by the Slicer module's Logic and the batch script)

def output_names(volume_name: str) -> dict[str, str]:
    """Scene node names of the outputs, named after the input volume."""
    return {"levels": volume_name + LEVELS_SUFFIX, "segmentation": volume_name + SEGMENTATION_SUFFIX,
            "table": volume_name + TABLE_SUFFIX, "plot": volume_name + PLOT_SUFFIX}


def file_stem(volume_name: str) -> str:
    """A file-system-safe stem from a node name."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", volume_name).strip("._")
    return stem or "volume"


@dataclass
class SceneOutputs:
    scan: Scan
    levels: LevelSet  # as used by the extraction (corners estimated where missing)
    volumes: object  # extract.ScanVolumes
    results: list
    levels_node: object = None
    segmentation_node: object = None
    table_node: object = None
    plot_node: object = None


def extract_in_scene(volume_node, levels: LevelSet, config=None):
    """Extract the VB/IVD volumes of a volume node: (Scan in LPS, levels used, ScanVolumes)."""
    from .. import extract

    scan = scan_from_volume_node(volume_node)
    volumes = extract.extract_scan(scan, levels, config)
    return scan, prepared_levels(scan, levels), volumes


def _node_by_name(scene, name: str, cls: str):
    node = scene.GetFirstNodeByName(name)
    return node if node is not None and node.IsA(cls) else None


def show_results(scene, volume_node, scan: Scan, levels: LevelSet, volumes,
                 results: Sequence[StructureResult] = ()) -> SceneOutputs:
    """Create (or update, when they exist) the output nodes of one volume."""
    names = output_names(volume_node.GetName())
    out = SceneOutputs(scan, levels, volumes, list(results))
    out.levels_node = markups_from_levels(
        scene, levels, names["levels"],
        node=_node_by_name(scene, names["levels"], "vtkMRMLMarkupsFiducialNode"))
    out.segmentation_node = segmentation_from_shapes(
        scene, structure_shapes(levels, volumes), results, names["segmentation"], scan.affine, volume_node,
        node=_node_by_name(scene, names["segmentation"], "vtkMRMLSegmentationNode"))
    if results:
        out.table_node = table_from_results(scene, results, names["table"],
                                            node=_node_by_name(scene, names["table"], "vtkMRMLTableNode"))
        old = _node_by_name(scene, names["plot"], "vtkMRMLPlotChartNode")
        if old is not None:
            series = [old.GetNthPlotSeriesNode(i) for i in range(old.GetNumberOfPlotSeriesNodes())]
            for n in series + [old]:
                scene.RemoveNode(n)
        if _n_classes(results):
            out.plot_node = plot_from_table(scene, out.table_node, names["plot"])
    grade_color_table(scene)
    return out


def save_outputs(outputs: SceneOutputs, out_dir, stem: str) -> dict[str, Path]:
    """``<stem>.mrk.json``, ``<stem>.seg.nrrd`` and ``<stem>.csv`` (+ schema) in ``out_dir``."""
    out_dir = Path(out_dir)
    files = {"levels": save_markups(outputs.levels_node, out_dir / f"{stem}.mrk.json"),
             "segmentation": save_segmentation(outputs.segmentation_node, out_dir / f"{stem}.seg.nrrd")}
    if outputs.table_node is not None:
        files["table"] = save_table(outputs.table_node, out_dir / f"{stem}.csv")
    return files


# --------------------------------------------------------------------------------------------
# models on one scan (in-process: grading one scan is fast enough for the GUI thread); the
# library's loaders, adapted to the results table

def results_from_grades_doc(doc: dict) -> list[StructureResult]:
    """Disc rows of the results table from a grades document (``grading.grade_volumes``)."""
    out = []
    names = doc["model"]["class_names"]
    for d in doc["discs"]:
        if not d["present"]:
            continue
        g = d["grade"]
        out.append(StructureResult(d["level"], int(g) if g is not None and str(g).isdigit() else None,
                                   [float(d["probabilities"][c]) for c in names]))
    return out


def grade_volumes(volumes, checkpoint_dir, tta: bool = True, device: str = "auto") -> list[StructureResult]:
    """Grade the extracted discs of one scan with a grading checkpoint (``spine-ssl grade-train``):
    ``grading.load_grading_model`` + ``grading.grade_volumes``, adapted to table rows."""
    from .. import grading

    gm = grading.load_grading_model(checkpoint_dir, device)
    doc = grading.grade_volumes(gm, volumes.ivd, volumes.ivd_present, volumes.discs, volumes.ivd_affine,
                                grading.TTAConfig() if tta else grading.TTAConfig.none())
    return results_from_grades_doc(doc)


def compare_volumes(volumes_a, volumes_b, checkpoint_dir, threshold: float | None = None,
                    device: str = "auto") -> list[StructureResult]:
    """Per vertebral level, the distance between the pair embeddings of the same VB in two scans
    (the paper's Fig. 6; the space the pretraining's pair loss shaped: fc7, or its projection),
    and the same/different call when a threshold is given."""
    import torch

    from ..pretrain import load_pretrained

    pm = load_pretrained(checkpoint_dir, device)
    both = np.flatnonzero(volumes_a.vb_present & volumes_b.vb_present)
    if len(both) == 0:
        return []
    dev = next(pm.model.parameters()).device
    with torch.inference_mode():
        za, _ = pm.model.pair_embedding(torch.as_tensor(volumes_a.vb[both], dtype=torch.float32, device=dev).unsqueeze(1))
        zb, _ = pm.model.pair_embedding(torch.as_tensor(volumes_b.vb[both], dtype=torch.float32, device=dev).unsqueeze(1))
        if pm.normalize:
            za, zb = torch.nn.functional.normalize(za, dim=1), torch.nn.functional.normalize(zb, dim=1)
        dist = torch.linalg.vector_norm(za - zb, dim=1).cpu().numpy()
    return [StructureResult(volumes_a.levels[i], distance=float(d),
                            same=None if threshold is None else bool(d <= threshold))
            for i, d in zip(both, dist)]
