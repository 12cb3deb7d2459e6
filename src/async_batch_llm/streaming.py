"""Streaming runs: results in completion order over a lazily read source, at flat memory.

``process_stream(strategy, prompts)`` yields each :class:`~async_batch_llm.WorkItemResult` as soon
as it is published; ``process_prompts(strategy, prompts)`` collects them into a
:class:`~async_batch_llm.BatchResult`.
"""

from async_batch_llm._internal.source import PromptSource
from async_batch_llm._internal.streaming import ResultStream, process_prompts, process_stream

__all__ = ["PromptSource", "ResultStream", "process_prompts", "process_stream"]
