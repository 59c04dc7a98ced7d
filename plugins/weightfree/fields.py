"""Parameter types shared by the weight-free metrics' configs."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def must_be_odd(value: int) -> int:
    """``value`` when it is odd; a window or neighbourhood needs a centre pixel."""
    if value % 2 == 0:
        raise ValueError(f"must be odd (got {value})")
    return value


#: An ``int`` refused at config load when even: MS-SSIM's ``window``, SWD's ``neighbourhood``.
OddInt = Annotated[int, AfterValidator(must_be_odd)]
