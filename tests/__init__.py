"""The test suite; its folders mirror the code (README: Layout)."""
