"""Tests of the port contract every model folder passes."""
