"""LLM call strategies: how a work item calls a model."""

from async_batch_llm._strategies.anthropic import AnthropicStrategy as AnthropicStrategy
from async_batch_llm._strategies.base import LLMCallStrategy as LLMCallStrategy
from async_batch_llm._strategies.gemini import GeminiCachedStrategy as GeminiCachedStrategy
from async_batch_llm._strategies.gemini import GeminiStrategy as GeminiStrategy
from async_batch_llm._strategies.openai import OpenAIStrategy as OpenAIStrategy
from async_batch_llm._strategies.pydantic_ai import PydanticAIStrategy as PydanticAIStrategy
