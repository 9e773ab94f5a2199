"""Keep peak RSS close to what the model really needs on glibc systems.

Dynamic padding gives every batch a different shape. glibc raises its mmap
threshold each time a large block is freed (up to 32 MB on 64-bit), after which
activation buffers are carved out of the heap, fragment it and are never
returned to the OS: RSS climbs to several times the live tensors (7 GB on
chnsenticorp with a 24M-parameter model). Pinning the threshold keeps large
tensors on mmap, released to the OS when freed. No library exposes this knob,
so we call mallopt through ctypes; elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("domaintune")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def pin_malloc_thresholds(mmap_threshold: int = 4 << 20, trim_threshold: int = 64 << 20) -> bool:
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
