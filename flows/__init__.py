"""Prefect flows composing the tasks: train_all, train_backbone, retrain, predict, watch."""
