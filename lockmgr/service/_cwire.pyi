"""Stub of the compiled frame helper (lockmgr/service/_cwire.pyx)."""
from typing import List, Optional, Tuple

from .._core._ctable import PackedItems

def split_lock_many(frame: bytes) -> Optional[Tuple[bytes, List[Tuple[int, PackedItems]]]]: ...
