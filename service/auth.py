"""Optional API keys, stored only as sha256 digests.

Keys come from `EXTRACTOR_API_KEYS` (comma-separated digests) and/or a file
of digests, one per line. With none configured the service is open. A client
sends its key as `Authorization: Bearer KEY` or `X-API-Key: KEY`.

    python -m service.auth KEY      # prints the digest to store
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from extractor.errors import Unauthorized

_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    def __init__(self, digests: Iterable[str] = ()) -> None:
        self._digests: list[bytes] = []
        for i, d in enumerate(digests):
            match = _DIGEST.match(d.strip().lower())
            if match is None:
                raise ValueError(f"API key digest #{i + 1} is not a sha256 hex digest (64 hex digits)")
            self._digests.append(match.group(1).encode())

    @classmethod
    def load(cls, digests: Iterable[str] = (), file: str | None = None) -> ApiKeys:
        all_digests = list(digests)
        if file:
            for line in Path(file).read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    all_digests.append(line)
        return cls(all_digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None, x_api_key: str | None) -> None:
        """Raise `Unauthorized` unless keys are off or the request carries a known key."""
        if not self.enabled:
            return
        key = (x_api_key or "").strip()
        if not key and authorization is not None:  # an empty X-API-Key does not hide a Bearer key
            scheme, _, value = authorization.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise Unauthorized("an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")
        # headers arrive decoded as Latin-1: a key sent as UTF-8 bytes is read back as UTF-8 too
        candidates = {key}
        try:
            candidates.add(key.encode("latin-1").decode("utf-8"))
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        digests = [hash_key(k).encode() for k in candidates]
        # compare against every digest, so timing does not tell which prefix matched
        if not any([hmac.compare_digest(digest, d) for digest in digests for d in self._digests]):
            raise Unauthorized("unknown API key")


if __name__ == "__main__":  # pragma: no cover
    for arg in sys.argv[1:]:
        print(hash_key(arg))
