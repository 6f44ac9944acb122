"""Page sizes: what a list call may ask for, on every transport."""

from __future__ import annotations

from sielum.errors import InvalidArgumentError

MAX_PAGE_SIZE = 1000


def check_page_size(page_size: int) -> int:
    """The page size to ask the store for: 0 is the default, above the cap is the cap."""
    if page_size < 0:
        raise InvalidArgumentError("page_size must not be negative")
    return min(page_size or 100, MAX_PAGE_SIZE)
