"""Test suite of async-batch-llm (a package so test modules can import ``tests.conftest``)."""
