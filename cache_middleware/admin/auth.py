"""Bearer-token authentication for the admin sub-app.

Tokens are compared in constant time on bytes (`hmac.compare_digest`), against every configured
token, so neither timing nor an odd header (non-ASCII, empty, huge) reveals or crashes anything.
A venue token's principal can see and touch only that venue's entries.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

__all__ = ["Principal", "TokenTable"]


@dataclass(frozen=True, slots=True)
class Principal:
    venue: str | None  # None: the whole cache


class TokenTable:
    def __init__(self, token: str | None, venue_tokens: dict[str, str]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        if token:
            self._entries.append((token.encode("utf-8"), Principal(None)))
        for venue, venue_token in venue_tokens.items():
            self._entries.append((venue_token.encode("utf-8"), Principal(venue)))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: bytes | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <token>` header value, or None."""
        if not authorization or len(authorization) > 4096:
            return None
        scheme, _, presented = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return None
        presented = presented.strip()
        found: Principal | None = None
        for expected, principal in self._entries:
            # No early exit: every token is compared, whichever matches.
            if hmac.compare_digest(presented, expected) and found is None:
                found = principal
        return found
