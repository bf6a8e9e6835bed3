"""Dual-modal edge deployment toolkit: train, export, verify, build and benchmark."""

__version__ = "0.1.0"
