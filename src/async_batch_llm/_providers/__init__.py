"""Provider adapters: the only modules that talk to a vendor SDK.

Each adapter imports its SDK lazily, so ``import async_batch_llm`` never loads one. The public
names live in :mod:`async_batch_llm.models`.
"""

__all__: list[str] = []
