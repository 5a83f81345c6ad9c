"""Which segments a writer merges after a commit (docs/collections.md, "Merge policy").

:class:`TieredMergePolicy` puts each segment in a size tier by its live documents (tier 0 up to
``floor_docs``, then one tier per factor ``segments_per_tier``), like Lucene's tiered policy, and
merges a run of ``segments_per_tier`` *adjacent* segments of one tier into one segment of the next
tier. Only adjacent segments merge, so the collection's document order (segment order, then
position: what ties are broken by) never changes. A segment whose deleted share exceeds
``max_deleted_fraction`` is rewritten alone (its tombstoned documents dropped). With appends
only, the segment count stays below ``segments_per_tier`` per tier (a logarithmic number of
tiers). ``merge_policy=None`` turns merging off; :meth:`Collection.optimize` merges everything.

>>> p = TieredMergePolicy(segments_per_tier=3, floor_docs=10)
>>> p.find_merges([(5, 0), (5, 0), (40, 0), (5, 0), (5, 0), (5, 0)])
[(3, 6)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["TieredMergePolicy", "MergePolicy"]


@dataclass(frozen=True)
class TieredMergePolicy:
    segments_per_tier: int = 10
    floor_docs: int = 1000
    max_merged_docs: int = 5_000_000
    max_deleted_fraction: float = 0.33

    def __post_init__(self) -> None:
        if isinstance(self.segments_per_tier, bool) or not isinstance(self.segments_per_tier, int) \
                or self.segments_per_tier < 2:
            raise ValueError(f"segments_per_tier must be an integer >= 2, got {self.segments_per_tier!r}")
        if self.floor_docs < 1 or self.max_merged_docs < 1:
            raise ValueError("floor_docs and max_merged_docs must be >= 1")
        if not 0 < self.max_deleted_fraction <= 1:
            raise ValueError(f"max_deleted_fraction must be in (0, 1], got {self.max_deleted_fraction!r}")

    def tier(self, live_docs: int) -> int:
        if live_docs <= self.floor_docs:
            return 0
        return 1 + int(math.log(live_docs / self.floor_docs) / math.log(self.segments_per_tier) + 1e-9)

    def find_merges(self, segments: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Ranges ``[start, end)`` of segments to merge, disjoint, given each segment's
        ``(live documents, deleted documents)`` in collection order."""
        out: list[tuple[int, int]] = []
        taken = [False] * len(segments)
        tiers = [self.tier(live) for live, _ in segments]
        n = self.segments_per_tier
        i = 0
        while i + n <= len(segments):
            window = range(i, i + n)
            total = sum(segments[j][0] for j in window)
            if len({tiers[j] for j in window}) == 1 and total <= self.max_merged_docs:
                out.append((i, i + n))
                for j in window:
                    taken[j] = True
                i += n
            else:
                i += 1
        for j, (live, deleted) in enumerate(segments):
            if not taken[j] and deleted and deleted > self.max_deleted_fraction * (live + deleted):
                out.append((j, j + 1))
        return sorted(out)


MergePolicy = TieredMergePolicy
