"""What a photo's own metadata says about where and when it was taken: the evidence :mod:`src.locate` combines.

(Interface first; the reader is being written.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone


@dataclass
class PhotoEvidence:
    """One photo's capture time, own GPS and device, after sanity checks (an absurd value is ``None`` + a note).

    ``time_local``: the wall-clock capture time the device wrote (DateTimeOriginal + sub-seconds), naive.
    ``utc_offset_min``: its offset to UTC in minutes (OffsetTimeOriginal, or derived from GPS time), ``None`` when
    the device did not say: then ``time_local`` is on the device's own clock, whose zone is unknown.
    ``gps``: the photo's own position ``(lat, lon)`` written by the camera or another program, never one we
    estimated. ``device``: ``"Make Model"`` plus ``" #serial"`` when present; ``None`` without EXIF (a scan).
    """
    path: str
    time_local: datetime | None = None
    utc_offset_min: int | None = None
    gps: tuple[float, float] | None = None
    gps_time: datetime | None = None          # GPSDateStamp + GPSTimeStamp, UTC (naive), when present and sane
    device: str | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "file"                      # "file", "sidecar", "file+sidecar", "none"

    @property
    def instant(self) -> datetime | None:
        """The capture instant in UTC (aware), when the time and its offset are both known."""
        if self.time_local is None or self.utc_offset_min is None:
            return None
        return (self.time_local - timedelta(minutes=self.utc_offset_min)).replace(tzinfo=timezone.utc)
