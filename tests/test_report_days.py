"""daily-report's days: yesterday by default, a backfill range, and bad ranges refused before anything runs."""

from __future__ import annotations

from datetime import date

import pytest

from flows.daily_report import MAX_DAYS, days_asked
from tasks.errors import InvalidInput

TODAY = date(2026, 12, 6)


def test_yesterday_by_default_and_a_range_as_asked():
    assert days_asked(None, None, TODAY) == (date(2026, 12, 5), date(2026, 12, 5))
    assert days_asked(date(2026, 11, 1), date(2026, 11, 30), TODAY) == (date(2026, 11, 1), date(2026, 11, 30))
    assert days_asked(TODAY, None, TODAY) == (TODAY, TODAY)  # today so far


@pytest.mark.parametrize("day,until,says", [
    (date(2026, 12, 5), date(2026, 12, 1), "before day"),
    (date(2026, 12, 7), None, "has not begun"),
    (date(2026, 12, 1), date(2026, 12, 9), "has not begun"),
    (date(2025, 1, 1), date(2026, 12, 1), f"at most {MAX_DAYS}"),
])
def test_bad_ranges_are_refused_with_a_reason(day, until, says):
    with pytest.raises(InvalidInput, match=says):
        days_asked(day, until, TODAY)
