"""Fenced moves of an org between regions."""
