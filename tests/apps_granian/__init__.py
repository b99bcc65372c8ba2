"""Import targets for tests/test_granian.py (granian takes `module:app`, no factory arguments)."""
