"""Tests of common/porting/."""
