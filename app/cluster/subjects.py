"""Subject and key names: a node's name made into one NATS subject token and KV key.

A subject token may not hold `.`, `*`, `>` or whitespace, and a KV key only `[-/_=.A-Za-z0-9]`
(ADR-8): a node named `db1.example.com` would split into three tokens. A node's token keeps
letters, digits, `_` and `-` as they are and writes every other byte of its UTF-8 as `=XX`
(upper-case hex), so `db1.example.com` is `db1=2Eexample=2Ecom`: valid as both, and reversible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(rb"[A-Za-z0-9_-]")
_TOKEN = re.compile(r"^(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+$")


def encode_token(name: str) -> str:
    if not name:
        raise ValueError("a node name cannot be empty")
    return "".join(chr(b) if _PLAIN.fullmatch(bytes((b,))) else f"={b:02X}" for b in name.encode())


def decode_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not a node token: {token!r}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode()


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every name the cluster uses, from one prefix (ClusterSettings.prefix)."""

    prefix: str

    def died(self, node: str) -> str:
        """Deaths: stored in the stream, and seen at once by core subscribers."""
        return f"{self.prefix}.{encode_token(node)}.died"

    def life(self, node: str) -> str:
        """Births and execs: core NATS only."""
        return f"{self.prefix}.{encode_token(node)}.life"

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}.{encode_token(node)}.hb"

    def ask(self, node: str) -> str:
        """Request-reply: "are these lives of yours alive?"."""
        return f"{self.prefix}.{encode_token(node)}.ask"

    def follow(self, node: str) -> str:
        """Request-reply: "follow this life of yours with a pidfd"."""
        return f"{self.prefix}.{encode_token(node)}.follow"

    def all(self, kind: str) -> str:
        return f"{self.prefix}.*.{kind}"

    def node_of(self, subject: str) -> str:
        """The node a subject of the form prefix.<token>.kind is about."""
        return decode_token(subject.split(".")[1])

    @property
    def stream(self) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_DEATHS"

    @property
    def bucket(self) -> str:
        return f"{self.prefix}_nodes"

    def key(self, node: str) -> str:
        return encode_token(node)
