"""Batch runs: a manifest CSV of images, volumes and frame sequences with their prompts.

* :mod:`.manifest`: columns, parsing and row checks (:func:`read_manifest`);
* :mod:`.runner`: one case through the library (segment, propagate, track), its outputs and
  ``case.json`` (written last: the done marker that makes batches resumable);
* :mod:`.schedule`: in this process, on N local processes or on a Dask cluster
  (:func:`run_batch`), summaries and failures;
* :mod:`.evaluate`: the metrics table and plot for cases with a reference mask.
"""

from .manifest import COLUMNS, Case, Manifest, RowError, read_manifest
from .runner import BatchPlan, CaseResult, run_case
from .schedule import BatchReport, run_batch

__all__ = ["COLUMNS", "BatchPlan", "BatchReport", "Case", "CaseResult", "Manifest", "RowError",
           "read_manifest", "run_batch", "run_case"]
