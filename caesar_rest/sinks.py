"""The write-only targets an upload's file part streams into (caesar_rest.multipart), on local disk or S3."""
from __future__ import annotations

from typing import Any


class WriteSink:
    """write() takes the part's bytes as they arrive; size counts them; the checksums are read at the end."""

    size = 0
    _sums: Any          # a Checksums fed by write()

    @property
    def sha256(self) -> str:
        return self._sums.sha256

    @property
    def crc64nvme(self) -> str | None:
        return self._sums.crc64nvme
