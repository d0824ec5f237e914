"""Shared code of the tests (no tests here): imported by test modules, never a test module itself."""
