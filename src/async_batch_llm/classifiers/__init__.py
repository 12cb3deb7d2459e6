"""Provider-specific error classifiers."""

from async_batch_llm.classifiers.gemini import GeminiErrorClassifier

__all__ = ["GeminiErrorClassifier"]
