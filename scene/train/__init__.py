"""Training: the typed parameters (:mod:`~scene.train.params`, :mod:`~scene.train.presets`), the feature cache
(:mod:`~scene.train.features`), fitting (:mod:`~scene.train.fit`), the per-backbone pipeline's stages
(:mod:`~scene.train.stages`) and writing a run (:mod:`~scene.train.experiment`).
"""
