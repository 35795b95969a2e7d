"""What a request's declared tensor shape may be, before anything is made of it (HTTP V2
and gRPC both check it)."""

from __future__ import annotations

import math

from baton.errors import RequestError

#: The most dimensions an input may have: numpy 1's limit (numpy 2's is 64), which every
#: worker's numpy can hold; past numpy's own, reshaping raised and the answer was a 500.
MAX_DIMS = 32
#: More elements than a request (under 2 GiB, a byte or more per element) can carry; a
#: shape past it with a zero size holds nothing, but numpy cannot even make it.
MAX_ELEMENTS = 2**31 - 1


def check_shape(name: str, shape: list[int]) -> None:
    """A shape numpy can make, whose elements a request could carry (the values' count
    against the shape is checked where they are decoded). HTTP and gRPC both call it."""
    where = {"field": f"inputs.{name}.shape"}
    if len(shape) > MAX_DIMS:  # before the shape is shown: it may be megabytes long
        raise RequestError(f"input {name!r}: shape has {len(shape)} dimensions, more than "
                           f"{MAX_DIMS}", details=where)
    if any(d < 0 for d in shape):
        raise RequestError(f"input {name!r}: shape {shape} has a negative size",
                           details=where)
    if math.prod(d or 1 for d in shape) > MAX_ELEMENTS:
        raise RequestError(f"input {name!r}: shape {shape} is too large: its non-zero sizes "
                           f"multiply to more than {MAX_ELEMENTS}, more elements than a "
                           "request can carry", details=where)
