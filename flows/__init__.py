"""Prefect flows of the project."""
