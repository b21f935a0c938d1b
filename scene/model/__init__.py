"""Model: the backbones (:mod:`~scene.model.backbones`), the head and the full saved model
(:mod:`~scene.model.network`), the image input pipeline (:mod:`~scene.model.pipeline`), batch prediction
(:mod:`~scene.model.predict`) and the TensorFlow thread/XLA settings (:mod:`~scene.model.runtime`).
"""
