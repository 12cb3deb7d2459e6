"""Observers: receive the processor's lifecycle events (metrics, logging, tracing)."""

from async_batch_llm.observers.base import (
    BaseObserver,
    ExtendedEvent,
    ProcessingEvent,
    ProcessorObserver,
)
from async_batch_llm.observers.metrics import MetricsObserver
from async_batch_llm.observers.otel import OpenTelemetryObserver
from async_batch_llm.observers.progress import RichProgressObserver

__all__ = [
    "BaseObserver",
    "ExtendedEvent",
    "MetricsObserver",
    "OpenTelemetryObserver",
    "ProcessingEvent",
    "ProcessorObserver",
    "RichProgressObserver",
]
