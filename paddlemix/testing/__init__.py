"""Helpers for tests and demos: synthetic data and tiny local checkpoints, so nothing is downloaded."""
