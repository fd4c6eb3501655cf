"""Domain-randomised synthetic scans for training the detector (``spine-ssl detect-train --randomised``).

The bundled detector must work on scans that look like nothing in particular, so its training
data are drawn from wide random distributions instead of one realistic look (the approach of
SynthSeg, Billot et al., Medical Image Analysis 86:102789, 2023: random tissue intensities on
random anatomy):

- ``anatomy``   random spinal columns T8 ... coccyx (numbers only): vertebra sizes, shapes,
                wedging and disc heights beyond the cohort generator's ranges, lordosis and
                kyphosis, scoliosis, the sacrum built four different ways, soft tissues;
- ``stack``     a random sagittal slice stack on it: field of view starting anywhere T9..L2 and
                ending anywhere sacrum..coccyx (some end above the sacrum), 6-9 vertebrae in view,
                0.4-1.2 mm pixels, 3-6 mm slices, 9-21 slices, in-plane rotation and obliquity;
- ``render``    the tissue label volume of a stack (two sub-slices per slice for partial volume)
                and the body instance map (training targets);
- ``appearance`` tissue labels -> an MR-like image, drawn anew for every training sample:
                T2 / T1 / fat-suppressed / fully random tissue intensities, inversion, texture,
                bias field, blur or sharpening, Rician noise, random monotone and non-monotone
                intensity curves;
- ``cases``     cached training cases on the detector's canonical grid and the sample pipeline;
- ``cohort``    writing a cohort of such scans as NIfTI + level files (for evaluation).

Every random draw is keyed by (seed, case index[, sample index]) so the same seed gives the same
data.  ``heldout`` is a structurally different generator used only for evaluation.
"""
