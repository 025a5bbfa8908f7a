from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from app.netlink.audit_records import Confirmed, Record, Syscall
from app.netlink.cn_proc import ExecEvent, ExitEvent, ForkEvent, ProcEvent

SLOTS: int
DRAINED: int
BUDGET: int

class Confirmations:
    def __init__(
        self, confirmed: type[Confirmed], calls: Sequence[tuple[bytes, bytes, int]]
    ) -> None: ...
    def counters(self) -> dict[str, int]: ...

def register(record: type[Record], syscall: type[Syscall]) -> None: ...
def audit_batch(
    fd: int,
    buf: bytearray,
    slot: int,
    budget: int,
    skip: AbstractSet[int],
    confirm: Confirmations | None = None,
) -> tuple[list[Record | Confirmed | bytes], int, int]: ...
def parse_audit(
    data: bytes, skip: AbstractSet[int], confirm: Confirmations | None = None
) -> list[Record | Confirmed | bytes]: ...
def raw_batch(fd: int, buf: bytearray, slot: int, budget: int) -> tuple[list[bytes], int, int]: ...
def parse_syscall(body: bytes) -> Syscall | None: ...
def register_proc(fork: type[ForkEvent], exec: type[ExecEvent], exit: type[ExitEvent]) -> None: ...
def proc_batch(
    fd: int, buf: bytearray, slot: int, budget: int, confirm: Confirmations | None = None
) -> tuple[list[ProcEvent | bytes], int, int]: ...
def parse_proc(data: bytes, confirm: Confirmations | None = None) -> list[ProcEvent | bytes]: ...
