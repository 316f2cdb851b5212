"""Tests of google_flan-t5-small/."""
