"""A request body as it arrives: decompressed piece by piece (gzip, several members too; deflate) and
never beyond its limit: the decompressor is told how much it may return, so a gzip bomb stops at the
limit instead of being inflated (docs/otlp.md "Limits")."""

from __future__ import annotations

import zlib
from typing import Any

#: ``Content-Encoding`` values accepted, and the decompressor each one needs ("" = none).
CODINGS = {"": "", "identity": "", "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class BodyTooLarge(Exception):
    """More than the limit, compressed or not (answered 413)."""


class Body:
    """A request body arriving in pieces, decompressed as it comes, never beyond ``limit`` bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.raw = 0
        self.size = 0
        self.chunks: list[bytes] = []
        self._inflate = self._decompressor() if coding else None

    def _decompressor(self) -> Any:
        return zlib.decompressobj(wbits=31 if self.coding == "gzip" else 15)

    def feed(self, data: bytes) -> None:
        self.raw += len(data)
        if self.raw > self.limit:
            raise BodyTooLarge
        if self._inflate is None:
            self._keep(data)
            return
        try:
            while data:
                if self._inflate.eof:  # bytes after the end of the compressed stream
                    if self.coding != "gzip":
                        raise ValueError(f"the body has {len(data)} bytes after the end of its deflate data")
                    self._inflate = self._decompressor()  # gzip: the next member (RFC 1952 2.2)
                # max_length: never more than one byte beyond the limit out of any input (a bomb stops here)
                self._keep(self._inflate.decompress(data, self.limit - self.size + 1))
                data = self._inflate.unconsumed_tail or (self._inflate.unused_data if self._inflate.eof else b"")
        except zlib.error as exc:
            raise ValueError(f"the body is not valid {self.coding} data: {exc}") from None

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge
        self.chunks.append(data)

    def finish(self) -> bytes:
        """The whole (decompressed) body; the pieces are let go (not held twice while it is handled)."""
        if self._inflate is not None:
            try:
                self._keep(self._inflate.flush())
            except zlib.error as exc:
                raise ValueError(f"the body is not valid {self.coding} data: {exc}") from None
            if not self._inflate.eof:
                raise ValueError(f"the {self.coding} body is truncated")
        body = b"".join(self.chunks)
        self.chunks = []
        return body
