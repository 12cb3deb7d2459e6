"""Provider-specific error classifiers.

Each one recognises its provider SDK's exceptions without importing the SDK, so importing this
package never loads ``google-genai``, ``openai`` or ``anthropic``.
"""

from async_batch_llm.classifiers.anthropic import AnthropicErrorClassifier
from async_batch_llm.classifiers.gemini import GeminiErrorClassifier
from async_batch_llm.classifiers.openai import OpenAIErrorClassifier

__all__ = ["AnthropicErrorClassifier", "GeminiErrorClassifier", "OpenAIErrorClassifier"]
