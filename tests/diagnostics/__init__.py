"""Tests of common/diagnostics/."""
