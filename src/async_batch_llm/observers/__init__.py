"""Observers: receive the processor's lifecycle events (metrics, logging, tracing)."""

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent, ProcessorObserver
from async_batch_llm.observers.metrics import MetricsObserver

__all__ = ["BaseObserver", "MetricsObserver", "ProcessingEvent", "ProcessorObserver"]
