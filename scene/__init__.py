"""scene: transfer-learning scene classifiers (Intel Image Classification), trained and retrained with Prefect."""

__version__ = "0.1.0"
