"""Synthetic longitudinal lumbar-spine MRI cohorts written as real DICOM (``spine-ssl synth``).

Modules: ``config`` (SynthConfig + presets), ``anatomy`` (subjects, fingerprints, degeneration),
``render`` (volume rendering), ``labels`` (SPIDER label maps), ``dicom`` (series writer),
``cohort`` (orchestration).  Heavy imports happen inside those modules, not here.
"""

from __future__ import annotations


def generate_cohort(out_dir, config=None, overwrite: bool = False) -> dict:
    """Generate a cohort into ``out_dir`` (see ``cohort.generate_cohort``)."""
    from .cohort import generate_cohort as _gen

    return _gen(out_dir, config, overwrite=overwrite)


__all__ = ["generate_cohort"]
