"""Conformance test classes for component authors (see docs/plugins.md)."""
