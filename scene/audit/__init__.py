"""Data audits on cached features: label issues (cleanlab), near-duplicates / leakage, drift.

Pure library (no Prefect): :mod:`scene.audit.labels`, :mod:`scene.audit.duplicates`, :mod:`scene.audit.drift`;
:mod:`scene.audit.source` gets the features. The CLI is ``scene audit``; the flows run them in their validate step.
"""
