"""Data: where images live and how they are read, listed, checked and synthesised.

:mod:`~scene.data.storage` (local paths and ``s3://`` URIs, one API) with :mod:`~scene.data.retries`,
:mod:`~scene.data.images` (decode and inspect), :mod:`~scene.data.image_fetch` (parallel reads),
:mod:`~scene.data.dataset` (the manifest and splits), :mod:`~scene.data.validation` and
:mod:`~scene.data.validation_report` (the data contract), :mod:`~scene.data.synth` (the synthetic demo set),
:mod:`~scene.data.scope` (which buckets and prefixes a run may read). Nothing here imports the model,
training, evaluation, registry, ops or CLI wings.
"""
