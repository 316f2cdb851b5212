"""Tests of AnandaSky/."""
