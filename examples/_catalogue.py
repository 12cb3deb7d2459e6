"""A made-up product catalogue: the large shared context of the Gemini caching examples.

The Gemini API only caches contexts of at least 1,024 tokens (2.5 Flash), so the catalogue is
about 1,400 words. :func:`lookup` answers questions about it the way the model would, for the
local emulator in offline mode.
"""

from __future__ import annotations

import re

__all__ = ["CATALOGUE", "MODEL_IDS", "lookup"]

_COLOURS = ("matte black", "brushed steel", "cream", "sage green", "copper")
_WAREHOUSES = ("Lyon", "Rotterdam", "Porto")
_EXTRAS = ("descaling kit", "spare filter", "travel pouch", "cleaning brush")

MODEL_IDS = tuple(f"K{n}" for n in range(1, 31))


def _facts(n: int) -> dict[str, str]:
    return {
        "capacity": f"{0.5 + (n % 4) * 0.25:.2f} litres",
        "power": f"{1000 + 100 * (n % 7)} watts",
        "colour": _COLOURS[n % len(_COLOURS)],
        "price": f"{19 + 3 * n} euros",
        "warranty": f"{1 + n % 3} years",
        "warehouse": _WAREHOUSES[n % len(_WAREHOUSES)],
        "extra": _EXTRAS[n % len(_EXTRAS)],
    }


def _entry(n: int) -> str:
    f = _facts(n)
    return (
        f"Model K{n} is a {f['colour']} electric kettle with a capacity of {f['capacity']} and "
        f"a heating element of {f['power']}. It costs {f['price']} and carries a warranty of "
        f"{f['warranty']}. Orders for model K{n} ship from our {f['warehouse']} warehouse, and "
        f"every box includes a {f['extra']}."
    )


CATALOGUE = "Acme kettle catalogue, spring edition.\n\n" + "\n".join(
    _entry(n) for n in range(1, len(MODEL_IDS) + 1)
)


def lookup(question: str) -> str:
    """Answer a question such as "What is the warranty of model K7?" from the catalogue."""
    match = re.search(r"\bK(\d+)\b", question)
    if match is None or not 1 <= int(match.group(1)) <= len(MODEL_IDS):
        return "The catalogue does not list that model."
    n = int(match.group(1))
    facts = _facts(n)
    for key, value in facts.items():
        if key in question.lower():
            return f"The {key} of model K{n} is {value}."
    return f"Model K{n}: {facts['capacity']}, {facts['power']}, {facts['price']}."
