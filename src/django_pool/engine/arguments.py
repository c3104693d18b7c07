"""Checks of the pool's arguments: each error names the argument and what it must be."""

from __future__ import annotations

# The largest time option accepted, in seconds (over three years): beyond it
# deadlines lose precision or overflow what the thread waits accept.
_MAX_SECONDS = 1e8


def check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value: object, minimum: float, strict: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        # Also refuses NaN and infinities, and compares ints too large for a float.
        and -_MAX_SECONDS <= value <= _MAX_SECONDS
    )
    if not ok or value < minimum or (strict and value == minimum):  # type: ignore[operator]
        relation = ">" if strict else ">="
        raise ValueError(
            f"{name} must be a number of seconds {relation} {minimum} and at most "
            f"{_MAX_SECONDS:.0e}, got {value!r}"
        )


def check_sizes(min_size: object, max_size: object) -> None:
    check_int("min_size", min_size, minimum=0)
    check_int("max_size", max_size, minimum=1)
    if max_size < min_size:  # type: ignore[operator]
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
