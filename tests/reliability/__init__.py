"""Reliability suite: nothing lost, nothing hung, nothing leaked (see docs/guarantees.md)."""
