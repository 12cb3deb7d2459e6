"""Durable results: the record shape, the stores that journal records, and the single writer."""
