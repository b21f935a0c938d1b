"""The ``scene`` command line: :mod:`~scene.cli.main` (the entry point and the training/data commands) and one
module per command group (:mod:`~scene.cli.audit`, :mod:`~scene.cli.events`, :mod:`~scene.cli.models`,
:mod:`~scene.cli.ops`). No other part of ``scene`` imports this package.
"""
