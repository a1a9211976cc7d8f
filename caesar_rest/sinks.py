"""The write-only file object that uploads stream into, on local disk or S3."""
from __future__ import annotations

from typing import Any


class WriteSink:
    """What werkzeug's multipart parser needs of a file part's target: write(), and seek/tell/read that
    pretend the data stayed put (it is already on its way to storage)."""

    size = 0
    _sums: Any          # a Checksums fed by write()

    @property
    def sha256(self) -> str:
        return self._sums.sha256

    @property
    def crc64nvme(self) -> str | None:
        return self._sums.crc64nvme

    def seek(self, *args: int) -> int:
        return 0

    def tell(self) -> int:
        return self.size

    def read(self, *args: int) -> bytes:
        return b""

    def flush(self) -> None:
        pass
