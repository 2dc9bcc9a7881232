"""Whole models with their own training loops."""
from .edrep import EDRep
from .prodige import ProdigeCompression

__all__ = ["EDRep", "ProdigeCompression"]
