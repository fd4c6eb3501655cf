"""Results rows (grades, probabilities, comparison distances) <-> table node, plot chart, grade colour
legend; table files (``.csv`` + ``.schema.csv``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import DISC_NAMES, atomic
from ..errors import InputError
from .nodes import GRADE_COLORS, GRADE_LABELS, _existing_file, _private_dir, _read, _slicer, _stem

# --------------------------------------------------------------------------------------------
# results -> table, plot, colour legend

@dataclass
class StructureResult:
    """One row of the results table: a disc (grade, class probabilities) or a vertebral body
    (fc7 distance to the other time point and the same/different call when comparing)."""

    name: str  # "L4-L5" (disc) or "L4" (vertebral body)
    grade: int | None = None
    probabilities: Sequence[float] | None = None  # one per grade 1..n
    distance: float | None = None
    same: bool | None = None

    @property
    def kind(self) -> str:
        return "IVD" if self.name in DISC_NAMES else "VB"


def results_from_grades(grades: dict, probabilities: dict | None = None) -> list[StructureResult]:
    """Disc rows from ``{disc: grade}`` (and optionally ``{disc: [p1..p4]}``), T12-L1..L5-S1 order."""
    probabilities = probabilities or {}
    out = []
    for disc in DISC_NAMES:
        if disc in grades or disc in probabilities:
            g = grades.get(disc)
            out.append(StructureResult(disc, None if g is None else int(g), probabilities.get(disc)))
    return out


def _n_classes(results: Iterable[StructureResult]) -> int:
    return max([len(r.probabilities) for r in results if r.probabilities is not None] or [0])


def table_from_results(scene, results: Sequence[StructureResult], name: str, node=None):
    """Table node: index, level, kind (IVD|VB), grade, p_grade1..n, distance (fc7, when comparing), same."""
    import vtk

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    n_cls = _n_classes(results)

    def column(cls, col_name):
        a = cls()
        a.SetName(col_name)
        table.AddColumn(a)
        return a

    cols = {"index": column(vtk.vtkIntArray, "index"), "level": column(vtk.vtkStringArray, "level"),
            "kind": column(vtk.vtkStringArray, "kind"), "grade": column(vtk.vtkStringArray, "grade")}
    for c in range(n_cls):
        cols[f"p{c + 1}"] = column(vtk.vtkDoubleArray, f"p_grade{c + 1}")
    cols["distance"] = column(vtk.vtkDoubleArray, "distance")
    cols["same"] = column(vtk.vtkStringArray, "same")
    for n, r in enumerate(results):
        cols["index"].InsertNextValue(n)
        cols["level"].InsertNextValue(r.name)
        cols["kind"].InsertNextValue(r.kind)
        cols["grade"].InsertNextValue("" if r.grade is None else str(int(r.grade)))
        for c in range(n_cls):
            p = np.nan if r.probabilities is None else float(r.probabilities[c])
            cols[f"p{c + 1}"].InsertNextValue(p)
        cols["distance"].InsertNextValue(np.nan if r.distance is None else float(r.distance))
        cols["same"].InsertNextValue("" if r.same is None else ("same" if r.same else "different"))
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def results_from_table(node) -> list[StructureResult]:
    """Inverse of ``table_from_results`` (also for a table read back from CSV)."""
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    p_cols = sorted((n for n in names if n.startswith("p_grade")), key=lambda s: int(s[len("p_grade"):]))

    def cell(row, col):
        return table.GetValueByName(row, col).ToString()

    def num(text):
        text = text.strip()
        return None if text in ("", "nan", "NaN") else float(text)

    out = []
    for row in range(table.GetNumberOfRows()):
        grade = cell(row, "grade").strip()
        probs = [num(cell(row, c)) for c in p_cols]
        same = cell(row, "same").strip()
        out.append(StructureResult(
            name=cell(row, "level"), grade=int(float(grade)) if grade else None,
            probabilities=None if not probs or any(p is None for p in probs) else probs,
            distance=num(cell(row, "distance")), same=None if not same else same == "same"))
    return out


def plot_from_table(scene, table_node, name: str, n_classes: int | None = None):
    """Bar chart of the class probabilities per disc (one series per grade) from the table."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("disc (row of the table)")
    chart.SetYAxisTitle("probability")
    table = table_node.GetTable()
    cols = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    p_cols = [c for c in cols if c.startswith("p_grade")][: n_classes or None]
    for col in p_cols:
        grade = int(col[len("p_grade"):])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} grade {grade}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("index")
        series.SetYColumnName(col)
        series.SetLabelColumnName("level")
        series.SetPlotType(series.PlotTypeBar)
        series.SetColor(*GRADE_COLORS.get(grade, GRADE_COLORS[None]))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def grade_color_table(scene, name: str = "SpineSSL grade colours"):
    """Colour table node mapping grade -> colour (the legend); one per scene, reused."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    keys = [None, 1, 2, 3, 4]
    node.SetNumberOfColors(len(keys))
    for idx, key in enumerate(keys):
        node.SetColor(idx, GRADE_LABELS[key], *GRADE_COLORS[key], 1.0)
    node.SetAttribute("SpineSSL.Role", "grade legend")
    return node


def save_table(node, path) -> Path:
    """Write a table node as CSV plus Slicer's ``.schema.csv`` (column types), atomically."""
    slicer = _slicer()
    path = Path(path)
    schema = path.with_name(_stem(path) + ".schema.csv")
    storage = slicer.vtkMRMLTableStorageNode()
    # Slicer derives the schema file name from the table's: write both in a private folder, then
    # move each into place atomically.
    with _private_dir(path.parent) as tmp_dir:
        storage.SetFileName(str(tmp_dir / "table.csv"))
        if not storage.WriteData(node):
            raise InputError("could not write table", path)
        atomic.write_bytes(schema, (tmp_dir / "table.schema.csv").read_bytes())
        atomic.write_bytes(path, (tmp_dir / "table.csv").read_bytes())
    return path


def load_table(scene, path, name: str | None = None):
    path = _existing_file(path)
    storage = _slicer().vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    schema = path.with_name(_stem(path) + ".schema.csv")
    if schema.is_file():
        storage.SetSchemaFileName(str(schema))
    return _read(scene, "vtkMRMLTableNode", storage, path, name or _stem(path), "table")

