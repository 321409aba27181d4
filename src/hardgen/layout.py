"""Where every artifact of the workflow lives (bottom layer: no science imports)."""

from __future__ import annotations

#: The file a skipped run's (empty) map folder holds instead of maps: a copy of its run record.
SKIPPED_MARKER = "skipped.json"
