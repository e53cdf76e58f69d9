"""Where the daily report is kept: one dated folder per day in the object store.

A day's report lives under `reports/daily/YYYY-MM-DD/` (report.md,
charts/*.png, aggregates/*.parquet), a prefix anyone can find and list
without an index. A re-run of the day replaces it: the new files are written
first, then whatever the day's folder still holds that the new set does not
name is deleted, so there is exactly one report per day. A run that dies
half way leaves the day with every file, some new and some from the run
before, until the next run replaces them; never an empty or half-deleted day.

Aggregates are stored as Parquet, which keeps column types for whoever
analyses them next (pandas, DuckDB, Spark), unlike CSV.
"""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import objectstore
from tasks.errors import InvalidInput
from tasks.objectstore import StoredObject

if TYPE_CHECKING:  # pragma: no cover
    from blocks import ObjectStore

DAILY_PREFIX = "reports/daily"
# What the store answers downloads with, so a browser shows a chart or the
# report instead of saving an opaque blob; by the file's suffix.
CONTENT_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
}
# Parquet field metadata marking a column of decimals stored as text (see parquet_bytes).
DECIMAL_TEXT = {b"node_runbooks.type": b"decimal-as-text"}


def day_prefix(day: date) -> str:
    return f"{DAILY_PREFIX}/{day.isoformat()}"


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def store_day_report(store: ObjectStore, day: date, files: dict[str, bytes]) -> list[StoredObject]:
    """Make `files` (name relative to the day's folder -> bytes) the day's whole report.

    Returns what was stored, in name order. Refuses an empty set (it would
    delete the day's report) and bad names before writing anything.
    """
    if not files:
        raise InvalidInput(f"no files for the report of {day}: refusing to replace it with nothing")
    prefix = day_prefix(day)
    keys = {objectstore.check_key(f"{prefix}/{name}"): name for name in sorted(files)}
    stored = [objectstore.put_bytes(store, key, files[name], content_type=content_type(name))
              for key, name in keys.items()]
    for old in objectstore.list_objects(store, prefix):
        if old.key not in keys:
            objectstore.delete(store, old.key)
    return stored


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """The frame as a Parquet file, without its index.

    Columns of Python Decimals (Postgres numeric) and of Python ints held as
    objects (wei sums, which pass 2**63 on a busy day) are stored as exact text,
    e.g. "1234.500000" (a missing value is null), marked in the field's
    metadata so `read_parquet` gives Decimals back. Text, not Parquet decimals: numeric(78,0) holds any uint256
    (wei amounts), more digits than Arrow's widest decimal (76), and Arrow
    would infer each day's precision and scale from that day's values, so the
    days' files would disagree on the type. Text is exact, of any size, and
    the same type every day; analysts cast it (DuckDB: `::DECIMAL(38, 6)`).
    """
    decimals = [c for c in df.columns if _is_decimal(df[c])]
    text = df.copy()
    for column in decimals:
        text[column] = df[column].map(_decimal_text)
    table = pa.Table.from_pandas(text, preserve_index=False)
    fields = [f.with_metadata(DECIMAL_TEXT) if f.name in decimals else f for f in table.schema]
    out = io.BytesIO()
    pq.write_table(table.cast(pa.schema(fields, metadata=table.schema.metadata)), out)
    return out.getvalue()


def read_parquet(data: bytes) -> pd.DataFrame:
    """A frame from `parquet_bytes`, with its decimal columns as Decimals again."""
    table = pq.read_table(io.BytesIO(data))
    frame = table.to_pandas()
    for field in table.schema:
        if (field.metadata or {}).items() >= DECIMAL_TEXT.items():
            frame[field.name] = frame[field.name].map(lambda v: None if pd.isna(v) else Decimal(v))
    return frame


def _is_decimal(column: pd.Series) -> bool:
    values = column.dropna()
    return (column.dtype == object and len(values) > 0
            and all(isinstance(v, (Decimal, int)) and not isinstance(v, bool) for v in values))


def _decimal_text(value: object) -> str | None:
    if pd.isna(value):
        return None
    # format "f" never uses an exponent: Decimal("1E+3") is written "1000", which every tool parses.
    return format(value, "f") if isinstance(value, Decimal) else str(value)
