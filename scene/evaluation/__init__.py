"""Evaluation: metrics with confidence intervals (:mod:`~scene.evaluation.metrics`), plots, the HTML report
(:mod:`~scene.evaluation.report`), the model card (:mod:`~scene.evaluation.model_card`), the backbone comparison
(:mod:`~scene.evaluation.comparison`), terminal/markdown tables and run summaries.
"""
