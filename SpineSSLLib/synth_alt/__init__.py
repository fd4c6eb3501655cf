"""Held-out EVALUATION generator (``spine-ssl synth-alt``): synthetic longitudinal lumbar-spine
MRI cohorts with a structurally different rendering from ``SpineSSLLib.synth``.

EVALUATION ONLY.  Every model SpineSSL trains (vertebra detector, Siamese pretraining, disc
grader) is trained on the main generator; this one is kept out of training so that a model can
be tested on scans whose anatomy model, contrast, field of view, scanner and DICOM conventions
it has never seen.  No training code may import this package or read its cohorts
(``Testing/test_synth_alt.py`` checks the imports).  See docs/synthetic-cohort.md
"Held-out generator".

It shares only the output writers with the main generator (DICOM series writer, truth JSON
schema, SPIDER label maps), so the pipeline reads it like any foreign cohort.

Modules: ``config`` (AltConfig, presets), ``subject`` (identity, ageing, degeneration),
``protocol`` (scanner, contrast, geometry and header conventions), ``shapes`` (centreline and
implicit bodies), ``body`` (surroundings), ``render`` (object + k-space scanner), ``truth``
(ground-truth geometry), ``cohort`` (writing), ``calibration``, ``figure``.
"""

from __future__ import annotations


def generate_cohort(out_dir, config=None, overwrite: bool = False, workers: int = 1) -> dict:
    """Write a held-out evaluation cohort into ``out_dir`` and return its summary."""
    from .cohort import generate_cohort as _gen

    return _gen(out_dir, config, overwrite=overwrite, workers=workers)


__all__ = ["generate_cohort"]
