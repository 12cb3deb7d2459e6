"""Tests of the artifact stores, the record encoding and the single writer."""
