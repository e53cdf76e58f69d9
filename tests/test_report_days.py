"""daily-report's days: yesterday by default, a backfill range, and bad ranges refused before anything runs."""

from __future__ import annotations

import io
from datetime import date

import pytest

from flows.daily_report import MAX_DAYS, days_asked
from tasks.errors import InvalidInput
from tests.postgres import postgres_server  # noqa: F401  (pytest fixture)

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


def test_a_day_without_data_says_so_and_still_makes_every_file(postgres_server):  # noqa: F811
    """The render path end to end on an empty day: the markdown says so, the charts and Parquet files exist."""
    import pandas as pd
    import psycopg
    from PIL import Image

    from flows.daily_report import aggregates, charts
    from lab import mevdb
    from tasks.operations import NODE_COLUMNS, Operations
    from tasks.profit import day_profit
    from tasks.receipts import Reconciliation
    from tasks.report_render import markdown
    from tasks.report_store import read_parquet

    dsn = postgres_server.dsn(postgres_server.create_database())
    with psycopg.connect(dsn, autocommit=True) as conn:
        mevdb.create_schema(conn)
        profit = day_profit(conn, date(2026, 1, 1))
    ops = Operations(nodes=pd.DataFrame(columns=NODE_COLUMNS),
                     runs=pd.DataFrame(columns=["run_id", "flow", "node", "started", "ended", "status", "result",
                                                "seconds"]),
                     recoveries=pd.DataFrame(columns=["node", "run_id", "started", "seconds"]),
                     problems=["Prometheus at http://127.0.0.1:1: ConnectError"])
    text = markdown(date(2026, 1, 1), profit, Reconciliation(), ops, None)
    assert "**No executions were recorded this day.**" in text and "could not read: Prometheus" in text
    pictures = charts(profit, ops)
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in pictures.values()) and len(pictures) == 4
    files = aggregates(profit, Reconciliation(), ops)
    assert read_parquet(files["aggregates/by_chain.parquet"]).empty and len(files) == 9
