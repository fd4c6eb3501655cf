"""Cohort indexing (``spine-ssl index ROOT --out C``): series grouping, sagittal T2 selection,
pseudonymous keys.

Headers only (no pixel data) are read.  Files are grouped by SeriesInstanceUID, each series'
geometry is checked (``io.series_geometry``: slices ordered by ImagePositionPatient projected
on the slice normal), one sagittal T2 series is selected per study, and subjects/time points
are keyed without identifiers:

- ``subject_key`` = salted SHA-256 of PatientID, ``scan_key``/``study_key`` = salted SHA-256 of
  the Series/StudyInstanceUID; the salt is drawn once per cohort (``C/cohort_salt.txt``);
- ``interval_days`` = days since the subject's first selected scan (StudyDate), ``timepoint``
  its rank; dates themselves are never written;
- ``family`` = salted hash of a user-supplied family/twin id (``--families CSV``);
- ``sex`` (0 = F, 1 = M, empty otherwise) from PatientSex and ``age_bin`` (decade bins, default
  0 = under 40, 1 = 40s, 2 = 50s, 3 = 60s, 4 = 70 and over) from PatientAge, or from the birth and
  study dates in memory: free labels for ``pretrain --aux-heads sex:2,age_bin:5``; the age and
  the dates themselves are never written;
- ``C/sources.csv`` maps each scan_key to salted hashes of its files' paths relative to ROOT,
  so ``extract`` finds the files again without any path (which may hold names) being stored.

NIfTI/NRRD/MHA cohorts (e.g. SPIDER ``<patient>_t2.mha``) are indexed from a table
(``--table CSV``: ``file``, ``subject``, ``date`` or ``interval_days``, optional ``family``,
``sex``, ``age``).

With ``shard`` (``--shard I/N``, ``shard.py``) only the subjects of shard I are indexed and the
manifests go to ``C/shards/index-I-of-N/``; ``spine-ssl merge C`` joins them.

Parts (every public name is re-exported here: ``from SpineSSLLib.index import X`` as before):
  ``rules``      ``IndexConfig``, ``classify_t2``, ``select_series``, subject labels (sex, age bin)
  ``build``      ``build_index``: records, keys, manifests
  ``manifests``  manifest columns, ``index.json``; ``read_index``, ``locate_sources``, ``read_table``
"""

from ..privacy import (  # noqa: F401 - the redaction helpers and salted keys live in privacy.py
    file_hash, identifiers, load_or_create_salt, redact, redact_error, salt_id, salted_key,
)
from .build import IndexResult, build_index  # noqa: F401
from .manifests import (  # noqa: F401
    ERROR_COLUMNS, SCHEMA, SERIES_COLUMNS, index_meta, load_families, locate_sources, read_index, read_table,
)
from .rules import (  # noqa: F401
    IndexConfig, SeriesRecord, age_bin, age_years, classify_t2, select_series, sex_label,
)
