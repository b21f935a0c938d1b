"""The model registry in the artifact bucket: versions, the champion pointer, the promotion gate.

Layout (``prefix`` defaults to ``models/``)::

    s3://<artifact-bucket>/models/<backbone>/<version>/   model.keras, config.json, metrics.json, history.csv,
                                                         plots, report.html, model_card.md, manifest.csv,
                                                         test_predictions.csv, decision.json, decision.md,
                                                         checksums.json (sha256 of every other file)
    s3://<artifact-bucket>/models/registry.json          every registered version (a JSON list)
    s3://<artifact-bucket>/models/champions/<slug>.json  one champion per dataset: the version, its data URI,
                                                         the decision that made it, earlier champions

The dataset is a registry dimension: every version records the data root it was trained on (``dataset``, an
URI with a trailing slash, e.g. ``s3://scene-data/datasets/demo/``), and each dataset lineage has its own
champion pointer, named ``<readable part of the URI>-<10 hex of sha256(URI)>`` (:func:`champion_key`). A
challenger is gated only against the champion of its own dataset. :func:`serving_champion` is the champion
predictions use: a named dataset's, or the only dataset's (an error lists the datasets when there are several).

Versions are content-addressed (``<backbone>-<first 12 hex of sha256(model.keras)>``), so registering the same
model twice changes nothing. ``registry.json`` and the champion pointers are always written as one whole object by a
compare-and-swap: read the object and its ETag, build the new document, write it only if the ETag is unchanged.

Beside each pointer, ``<prefix>gates/<slug>.json`` counts the gates the dataset's test split has served; the
gate's level is spent over them (:func:`scene.registry.rule.spent_alpha`, ``docs/gate.md``).

The promotion rule itself is the pure module :mod:`scene.registry.rule`; :func:`gate` applies it, smoke-loads the
challenger in a fresh process (:mod:`scene.registry.smoke`), moves the pointer and stores the decision.

Modules: :mod:`~scene.registry.store` (whole-object reads, compare-and-swap writes, locks and leases),
:mod:`~scene.registry.versions` (registering and listing versions), :mod:`~scene.registry.champions` (pointers,
decisions, the gate, manual promotion, rollback) and :mod:`~scene.registry.rule` (the promotion rule, pure).
Everything public is importable from ``scene.registry``.

What makes the compare-and-swap safe depends on the store (:func:`conditional_writes` probes it once per process):

* Stores that honour conditional PUTs (AWS S3, MinIO): ``put_object(IfMatch=etag)`` / ``IfNoneMatch="*"``.
  A true compare-and-swap for every writer everywhere; a lost race writes nothing.
* Stores that ignore them — the local stack's JuiceFS S3 gateway 1.4.2 accepts both headers and overwrites
  anyway (observed; conditional GETs and copies it does honour). There each pointer write runs under
  (1) an ``fcntl.flock`` on a per-user file in the temp folder, keyed by endpoint, bucket and key: an exact
  guarantee for all threads and processes on one machine — the whole local stack, whose gateway listens on
  loopback only; and (2) a lease object ``<key>.lock`` holding a random token, written, re-read after
  ``LEASE_SETTLE_S`` and used only if the token survived; stale leases expire after ``LEASE_TTL_S``. The lease
  is best effort across machines: it excludes writers whose check-then-write takes less than
  ``LEASE_SETTLE_S`` and whose clocks agree within ``LEASE_TTL_S``.

In every case a reader sees a whole champion pointer written by exactly one promotion, and of several promotions
of different versions started from the same observed champion exactly one returns True (across machines on a
store without conditional writes: under the lease's timing assumption). Promoting the version that already is
the champion returns True without writing, so a retried promotion is harmless.
"""

from scene.registry.champions import (
    DECISION_FILES,
    GATES,
    Pointer,
    champion,
    champions,
    gate,
    gates_served,
    promote,
    promote_version,
    read_champion,
    read_decision,
    reserve_gate,
    rollback,
    serving_champion,
    show,
    version_classes,
    write_decision,
)
from scene.registry.rule import (
    ALPHA,
    MARGIN,
    PREDICTION_COLUMNS,
    Decision,
    GateError,
    Paired,
    class_mismatch,
    decide,
    pair,
    per_class_recall,
    select_challenger,
    spent_alpha,
)
from scene.registry.store import (
    CHAMPIONS,
    PREFIX,
    REGISTRY,
    ConflictError,
    RegistryError,
    conditional_writes,
)
from scene.registry.versions import (
    ModelVersion,
    champion_key,
    dataset_uri,
    get_version,
    list_versions,
    register,
    version_id,
)

__all__ = [
    "ALPHA", "CHAMPIONS", "DECISION_FILES", "GATES", "MARGIN", "PREDICTION_COLUMNS", "PREFIX", "REGISTRY",
    "ConflictError", "Decision", "GateError", "ModelVersion", "Paired", "Pointer", "RegistryError", "champion",
    "champion_key", "champions", "class_mismatch", "conditional_writes", "dataset_uri", "decide", "gate",
    "gates_served", "get_version", "list_versions", "pair", "per_class_recall", "promote", "promote_version",
    "read_champion", "read_decision", "register", "reserve_gate", "rollback", "select_challenger", "serving_champion",
    "show", "spent_alpha", "version_classes", "version_id", "write_decision",
]
