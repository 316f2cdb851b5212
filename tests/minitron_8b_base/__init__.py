"""Tests of Minitron-8B-Base/."""
