"""The Python packages SpineSSL needs inside 3D Slicer, and a safe way to install them.

Rules (Slicer's Python is shared by every extension):
- torch comes from the *PyTorch* extension (``PyTorchUtils``: the build that matches the GPU);
  SpineSSL never installs, upgrades or replaces it with pip;
- numpy, scipy, SimpleITK and pydicom are Slicer's own (5.10: pydicom 2.4.4, numpy 2.0; 5.12:
  pydicom 3.0.2, numpy 2.4); SpineSSL only checks their versions;
- the rest is installed with pip after the user has seen the list, against a constraints file that
  pins torch and Slicer's packages at their installed versions (pip fails rather than replace
  them); monai, whose only requirements are torch and numpy, with ``--no-deps``;
- afterwards torch must be the same version from the same place, else the install is reported
  as having broken it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    dist: str  # distribution name (pip)
    minimum: str  # lowest version that works
    why: str
    source: str = "pip"  # "pip" | "slicer" (bundled with Slicer) | "pytorch" (PyTorch extension)
    no_deps: bool = False  # pip install --no-deps (its requirements are torch/numpy only)

    @property
    def spec(self) -> str:
        return f"{self.dist}>={self.minimum}"


REQUIREMENTS = (
    Requirement("torch", "torch", "2.1", "the networks", source="pytorch"),
    Requirement("numpy", "numpy", "1.26", "arrays", source="slicer"),
    Requirement("scipy", "scipy", "1.10", "resampling", source="slicer"),
    Requirement("SimpleITK", "SimpleITK", "2.3", "image files", source="slicer"),
    Requirement("pydicom", "pydicom", "2.4", "DICOM reading", source="slicer"),
    Requirement("monai", "monai", "1.3", "network building blocks", no_deps=True),
    Requirement("safetensors", "safetensors", "0.4", "model files"),
    Requirement("tqdm", "tqdm", "4.60", "progress reports"),
    Requirement("matplotlib", "matplotlib", "3.7", "figures (training curves, confusion matrices, QC pictures)"),
    Requirement("psutil", "psutil", "5.9", "stopping background jobs"),
    Requirement("sklearn", "scikit-learn", "1.3", "metrics (accuracy, kappa, ROC), class weights"),
    Requirement("zstandard", "zstandard", "0.22", "volume files (extracted volumes are Zstandard-compressed)"),
)


class DependencyError(RuntimeError):
    """A package could not be installed, or installing one changed what must not change."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``: the numeric release part (enough for lower bounds)."""
    parts = []
    for piece in re.split(r"[.+!-]", version or ""):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != piece:
            break
    return tuple(parts)


def installed_version(req: Requirement) -> str | None:
    """The installed version (distribution metadata, else the module's ``__version__``), or None."""
    try:
        return importlib.metadata.version(req.dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if importlib.util.find_spec(req.module) is None:
        return None
    module = importlib.import_module(req.module)  # e.g. a SimpleITK built by Slicer, without metadata
    return str(getattr(module, "__version__", "0"))


@dataclass
class Status:
    req: Requirement
    version: str | None

    @property
    def ok(self) -> bool:
        return self.version is not None and version_tuple(self.version) >= version_tuple(self.req.minimum)

    def describe(self) -> str:
        have = "not installed" if self.version is None else f"installed {self.version}"
        if self.ok:
            return f"{self.req.dist} {self.version}"
        how = {"pip": "pip" + (", --no-deps" if self.req.no_deps else ""),
               "pytorch": "PyTorch extension", "slicer": "comes with Slicer: update Slicer"}[self.req.source]
        return f"{self.req.spec}: {have} ({self.req.why}; {how})"


def check(requirements=None) -> list[Status]:
    importlib.invalidate_caches()
    return [Status(r, installed_version(r)) for r in (REQUIREMENTS if requirements is None else requirements)]


@dataclass
class Plan:
    statuses: list

    @property
    def torch(self) -> Status | None:
        """torch, when the PyTorch extension must install or upgrade it."""
        return next((s for s in self.statuses if s.req.source == "pytorch" and not s.ok), None)

    @property
    def pip(self) -> list:
        return [s for s in self.statuses if s.req.source == "pip" and not s.ok]

    @property
    def blockers(self) -> list:
        """Slicer's own packages that are too old: only a newer Slicer fixes them."""
        return [s for s in self.statuses if s.req.source == "slicer" and not s.ok]

    @property
    def ready(self) -> bool:
        return not (self.torch or self.pip or self.blockers)

    def pinned(self) -> dict[str, str]:
        """What must not change: torch and Slicer's packages, at their installed versions (those
        pip can see: installed with distribution metadata)."""
        out = {}
        for s in self.statuses:
            if s.req.source != "pip" and s.version:
                try:
                    out[s.req.dist] = importlib.metadata.version(s.req.dist)
                except importlib.metadata.PackageNotFoundError:
                    pass
        return out

    def summary(self) -> str:
        """What will be installed, and how (shown before anything is installed)."""
        if self.ready:
            return "All Python packages are installed: " + ", ".join(s.describe() for s in self.statuses) + "."
        lines = []
        if self.blockers:
            lines.append("Too old in this Slicer (install a newer Slicer): "
                         + "; ".join(s.describe() for s in self.blockers))
        if self.torch:
            lines.append("PyTorch, through the PyTorch extension (it picks the build for your GPU): "
                         + self.torch.describe())
        if self.pip:
            lines.append("With pip from PyPI: " + "; ".join(s.describe() for s in self.pip))
            pins = ", ".join(f"{k}=={v}" for k, v in self.pinned().items())
            if pins:
                lines.append(f"Kept exactly as installed (pip constraints): {pins}")
        return "\n".join(lines)


def plan(requirements=None) -> Plan:
    return Plan(check(requirements))


def pip_commands(p: Plan, constraints_file: str) -> list[list[str]]:
    """The ``pip install`` argument lists for a plan: ``--no-deps`` packages alone, the rest in one
    call; every call with ``-c constraints_file``."""
    commands = []
    no_deps = [s.req.spec for s in p.pip if s.req.no_deps]
    others = [s.req.spec for s in p.pip if not s.req.no_deps]
    if no_deps:
        commands.append(["--no-deps", *no_deps, "-c", constraints_file])
    if others:
        commands.append([*others, "-c", constraints_file])
    return commands


def torch_identity() -> tuple[str, str] | None:
    """(version, folder) of the installed torch distribution, read from disk (not the imported module)."""
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.version, os.path.realpath(str(dist.locate_file("")))


def install_with_pip(p: Plan, pip_install) -> list[list[str]]:
    """Run the plan's pip installs with ``pip_install`` (runs ``pip install ARGS``); raises
    DependencyError when torch changed or a package is still missing.  Returns the commands run."""
    before = torch_identity()
    fd, constraints = tempfile.mkstemp(prefix="spinessl-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}=={v}\n" for k, v in p.pinned().items()))
        commands = pip_commands(p, constraints)
        for args in commands:
            try:
                pip_install(args)
            except Exception as e:  # subprocess.CalledProcessError from pip, or a launcher error
                raise DependencyError(f"pip install {' '.join(args[:-2])} failed ({type(e).__name__}: {e})") from e
    finally:
        os.remove(constraints)
    after = torch_identity()
    if before is not None and after != before:
        raise DependencyError(f"installing changed torch ({before[0]} in {before[1]} -> "
                              f"{after[0] if after else 'removed'}); reinstall it with the PyTorch extension")
    still = [s for s in check([s.req for s in p.pip]) if not s.ok]
    if still:
        raise DependencyError("still missing after pip install: " + "; ".join(s.describe() for s in still))
    return commands
