"""Tests of core plumbing (common/*.py)."""
