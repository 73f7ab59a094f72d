"""Tests of the training engine (task-agnostic)."""
