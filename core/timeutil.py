"""The one helper for instants that do not come from a database column.

Values read from a :class:`core.db.UTCDateTime` column are aware and in UTC already.
What is left is times from elsewhere: a caller's ``now``, a time parsed from a
certificate, a revocation time handed to signature verification.  The center's rule
for those is the database's: a naive datetime means UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime | None = None) -> datetime:
    """``moment`` (now, when None) as an aware datetime in UTC; naive is taken as UTC."""
    if moment is None:
        return datetime.now(UTC)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
