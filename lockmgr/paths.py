"""Resource paths: validation and the canonical byte encoding.

A resource is a path: a tuple of 1 to ``MAX_DEPTH`` components, each a
``str``, ``int`` (signed 64-bit) or ``bytes``. A bare ``str``/``int``/``bytes``
means a one-component path. ``("db", 42)`` and ``("db", "42")`` differ.

The canonical encoding is the concatenation of each component's encoding::

    str   : 0x01, length (2 bytes, big-endian), UTF-8 bytes
    int   : 0x02, 8 bytes big-endian two's complement
    bytes : 0x03, length (2 bytes, big-endian), the bytes

Each component's encoding is self-delimiting, so the key of an ancestor is a
byte prefix of the key of its descendant, and two different paths never share
a key. The encoding is stable across processes and platforms (it is used for
routing by the service; never Python's randomised ``hash()``). The compiled
backend has its own implementation; ``tests/test_paths.py`` proves they agree.
"""

from typing import Any, List, Tuple, Union

from .errors import InvalidRequest

__all__ = ["MAX_DEPTH", "MAX_COMPONENT", "MAX_KEY", "Component", "Path", "Resource",
           "normalize", "encode", "decode", "prefix_ends"]

#: One component of a resource path.
Component = Union[str, int, bytes]
#: A normalized resource path: 1 to MAX_DEPTH components (what ``held()`` and
#: ``snapshot()`` return).
Path = Tuple[Component, ...]
#: What the API accepts as a resource: a path, or one component meaning a
#: one-component path.
Resource = Union[Component, Tuple[Component, ...]]

MAX_DEPTH = 32          # components per path
MAX_COMPONENT = 1024    # bytes per str (UTF-8) / bytes component
MAX_KEY = 4096          # bytes in a whole encoded path

INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1

_TAG_STR = 1
_TAG_INT = 2
_TAG_BYTES = 3


def normalize(resource: Resource) -> Path:
    """Return ``resource`` as a validated path tuple, or raise InvalidRequest."""
    r: Any = resource  # checked at run time, by the exact type tests below and encode()
    path: Path
    t = type(r)
    if t is tuple:
        path = r
    elif t is str or t is bytes or t is int:
        path = (r,)
    else:
        raise InvalidRequest(
            f"resource must be a tuple of str/int/bytes components, or one such component; got {t.__name__}")
    encode(path)  # validates every component
    return path


def encode(resource: Resource) -> bytes:
    """The canonical key of ``resource`` (a path or one component).

    Runtime complexity: O(length of the key).
    """
    path: Any = resource  # checked at run time, component by component
    if type(path) is not tuple:
        if type(path) in (str, bytes, int):
            path = (path,)
        else:
            raise InvalidRequest(
                f"resource must be a tuple of str/int/bytes components, or one such component; "
                f"got {type(resource).__name__}")
    n = len(path)
    if n == 0:
        raise InvalidRequest("resource path is empty; it needs 1 to 32 components")
    if n > MAX_DEPTH:
        raise InvalidRequest(f"resource path has {n} components; at most {MAX_DEPTH} are allowed")
    out = bytearray()
    for i, c in enumerate(path):
        t = type(c)
        if t is str:
            try:
                b = c.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"resource component {i} is a str that is not valid Unicode (lone surrogate)") from None
            if len(b) > MAX_COMPONENT:
                raise InvalidRequest(f"resource component {i} is {len(b)} bytes long; at most {MAX_COMPONENT} are allowed")
            out.append(_TAG_STR)
            out += len(b).to_bytes(2, "big")
            out += b
        elif t is int:
            if not INT_MIN <= c <= INT_MAX:
                raise InvalidRequest(f"resource component {i} is an int outside the signed 64-bit range")
            out.append(_TAG_INT)
            out += c.to_bytes(8, "big", signed=True)
        elif t is bytes:
            if len(c) > MAX_COMPONENT:
                raise InvalidRequest(f"resource component {i} is {len(c)} bytes long; at most {MAX_COMPONENT} are allowed")
            out.append(_TAG_BYTES)
            out += len(c).to_bytes(2, "big")
            out += c
        else:
            raise InvalidRequest(
                f"resource component {i} has type {t.__name__}; components must be str, int or bytes")
    if len(out) > MAX_KEY:
        raise InvalidRequest(f"resource path encodes to {len(out)} bytes; at most {MAX_KEY} are allowed")
    return bytes(out)


def prefix_ends(key: bytes) -> List[int]:
    """End offsets of each level's key inside ``key``: key[:ends[i]] is level i."""
    ends: List[int] = []
    i = 0
    n = len(key)
    while i < n:
        tag = key[i]
        if tag == _TAG_INT:
            i += 9
        elif tag in (_TAG_STR, _TAG_BYTES):
            i += 3 + int.from_bytes(key[i + 1:i + 3], "big")
        else:
            raise InvalidRequest(f"malformed resource key: bad tag {tag} at offset {i}")
        if i > n:
            raise InvalidRequest("malformed resource key: truncated component")
        ends.append(i)
    return ends


def decode(key: bytes) -> Path:
    """The path tuple whose canonical key is ``key`` (inverse of :func:`encode`)."""
    out: List[Component] = []
    start = 0
    for end in prefix_ends(key):
        tag = key[start]
        if tag == _TAG_INT:
            out.append(int.from_bytes(key[start + 1:end], "big", signed=True))
        elif tag == _TAG_STR:
            out.append(key[start + 3:end].decode("utf-8"))
        else:
            out.append(bytes(key[start + 3:end]))
        start = end
    return tuple(out)
