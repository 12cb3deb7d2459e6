"""Middleware: hooks that run around every attempt of a work item."""

from async_batch_llm.middleware.base import BaseMiddleware, Middleware

__all__ = ["BaseMiddleware", "Middleware"]
