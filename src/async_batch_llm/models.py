"""Gemini implementations of the :class:`~async_batch_llm.core.protocols.LLMModel` protocols.

``google-genai`` is imported only when a model is constructed (install the ``gemini`` extra).
"""

from async_batch_llm._providers.gemini import GeminiCachedModel as GeminiCachedModel
from async_batch_llm._providers.gemini import GeminiModel as GeminiModel
