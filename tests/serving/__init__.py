"""Tests of common/serving/."""
