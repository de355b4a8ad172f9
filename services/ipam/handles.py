"""A handle: the owner of allocations, with the blocks it holds addresses in.

The per-block counts make release-by-handle touch only those blocks, and let
the consistency check compare what a handle thinks it owns with the blocks.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Handle:
    handle_id: str
    blocks: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, handle_id: str, data: dict | None) -> "Handle":
        return cls(handle_id, dict((data or {}).get("blocks", {})))

    def to_json(self) -> dict:
        return {"handle_id": self.handle_id, "blocks": dict(sorted(self.blocks.items()))}

    def add(self, block: str, count: int) -> None:
        self.blocks[block] = self.blocks.get(block, 0) + count

    def remove(self, block: str, count: int) -> None:
        left = self.blocks.get(block, 0) - count
        if left > 0:
            self.blocks[block] = left
        else:
            self.blocks.pop(block, None)

    @property
    def empty(self) -> bool:
        return not self.blocks
