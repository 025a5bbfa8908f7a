from collections.abc import Set as AbstractSet

from app.netlink.audit_records import Record, Syscall

SLOTS: int
DRAINED: int
BUDGET: int

def audit_batch(
    fd: int, buf: bytearray, slot: int, budget: int, skip: AbstractSet[int], record: type[Record]
) -> tuple[list[Record | bytes], int, int]: ...
def parse_audit(
    data: bytes, skip: AbstractSet[int], record: type[Record]
) -> list[Record | bytes]: ...
def raw_batch(fd: int, buf: bytearray, slot: int, budget: int) -> tuple[list[bytes], int, int]: ...
def parse_syscall(body: bytes, cls: type[Syscall]) -> Syscall | None: ...
