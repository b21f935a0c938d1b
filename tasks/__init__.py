"""Thin Prefect tasks, one per pipeline step, each calling into :mod:`scene`."""
