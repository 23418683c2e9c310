"""Tests of the deterministic simulator."""
