"""Tests of the dependency-parsing task."""
