"""Tests of the task plug-ins."""
