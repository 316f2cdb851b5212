"""Tests of against the reference harnesses (lm-eval, mteb)."""
