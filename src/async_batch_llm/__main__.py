"""``python -m async_batch_llm``: the ``async-batch-llm`` command line."""

from async_batch_llm._cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog_name="python -m async_batch_llm"))
