"""Tests of all-MiniLM-L6-v2/."""
