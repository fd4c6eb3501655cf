"""Synthetic longitudinal lumbar-spine MRI cohorts written as real DICOM (``spine-ssl synth``).

Modules: ``config`` (SynthConfig + presets), ``anatomy`` (subjects, fingerprints, degeneration),
``render`` (volume rendering), ``labels`` (SPIDER label maps), ``dicom`` (series writer),
``cohort`` (orchestration).  Heavy imports happen inside those modules, not here.
"""

from __future__ import annotations


def generate_cohort(out_dir, config=None, overwrite: bool = False, workers: int = 1) -> dict:
    """Generate a cohort into ``out_dir`` and return its summary (see ``cohort.generate_cohort``).

    ``config`` is a ``SynthConfig`` (default knobs if None); ``workers`` processes render
    families in parallel without changing the output.
    """
    from .cohort import generate_cohort as _gen

    return _gen(out_dir, config, overwrite=overwrite, workers=workers)


__all__ = ["generate_cohort"]
