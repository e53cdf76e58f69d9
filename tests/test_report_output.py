"""The daily report's output side, no lab: charts are real PNGs, Slack gets the
message and every file (the lab's Slack stand-in, in-process), and the object
store (a real SeaweedFS) holds exactly one report per day."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from slack_sdk import WebClient

from blocks import SlackWorkspace
from tasks import objectstore, report_charts, report_store, slack
from tasks.errors import InvalidInput, NotificationError
from tests.s3 import BUCKET, s3_server, store  # noqa: F401  (fixtures)

TOKEN = "xoxb-1234567890-abcdefghijklmnop"
DAY = date(2024, 5, 1)
HOURS = pd.date_range("2024-05-01", periods=24, freq="h", tz="UTC")


def hourly() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = [(h, chain, rng.normal(200, 400)) for h in HOURS for chain in ("ethereum", "base", "arbitrum")]
    return pd.DataFrame(rows, columns=["hour", "chain", "net_usd"])


def costs() -> pd.DataFrame:
    return pd.DataFrame({
        "chain": ["ethereum", "base", "arbitrum"],
        "base_fee_usd": [1200.0, 30.0, 50.0], "priority_fee_usd": [400.0, 10.0, 4.0],
        "l1_fee_usd": [0.0, 80.0, 20.0], "builder_tip_usd": [2500.0, 0.0, 0.0], "flash_loan_fee_usd": [90.0, 5.0, 3.0],
    })


def rates() -> pd.DataFrame:
    return pd.DataFrame({"strategy": ["arb", "backrun", "liquidation"], "success_rate": [0.91, 0.72, 0.88]})


def uptime() -> pd.DataFrame:
    return pd.DataFrame({"node": ["eth-a", "eth-b", "base-a"], "uptime": [1.0, 0.999, 0.9997]})


# chart, its sample data, the columns holding its values
CHARTS = {
    "profit_by_hour": (report_charts.profit_by_hour, hourly, ["net_usd"]),
    "cost_breakdown": (report_charts.cost_breakdown, costs, list(report_charts.COST_COLUMNS)),
    "success_by_strategy": (report_charts.success_by_strategy, rates, ["success_rate"]),
    "uptime_by_node": (report_charts.uptime_by_node, uptime, ["uptime"]),
}


def decoded(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated or corrupt file fails here
    assert image.format == "PNG" and image.size == (report_charts.WIDTH, report_charts.HEIGHT)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, "a blank image"  # text is antialiased
    return image


def coloured(image: Image.Image) -> float:
    """The share of strongly coloured pixels: bars (and a legend's few). Text, axes and the target line are grey."""
    saturation = np.asarray(image.convert("HSV"))[..., 1]
    return float((saturation > 100).mean())


@pytest.mark.parametrize("name", CHARTS)
def test_a_chart_is_a_png_of_the_set_size_with_bars(name):
    chart, frame, _ = CHARTS[name]
    assert coloured(decoded(chart(frame()))) > 0.02


@pytest.mark.parametrize("name", CHARTS)
def test_no_rows_give_a_no_data_chart_not_an_error(name):
    chart, frame, _ = CHARTS[name]
    assert coloured(decoded(chart(frame().iloc[0:0]))) == 0  # what a query with no rows gives
    assert coloured(decoded(chart(pd.DataFrame()))) == 0  # not even the columns


@pytest.mark.parametrize("name", CHARTS)
def test_nan_values_are_left_out(name):
    chart, frame, columns = CHARTS[name]
    some = frame()
    some.loc[1, columns[0]] = np.nan
    assert coloured(decoded(chart(some))) > 0.02
    assert coloured(decoded(chart(frame().assign(**{c: np.nan for c in columns})))) < 0.005  # a legend, no bars


def test_an_hour_of_losses_only_and_a_missing_hour_are_drawn():
    losses = hourly().assign(net_usd=lambda f: -f["net_usd"].abs())
    assert coloured(decoded(report_charts.profit_by_hour(losses[losses["hour"] != HOURS[5]]))) > 0.02


# --------------------------------------------------------------------- Slack


def workspace(stubs) -> SlackWorkspace:
    stubs.slack_token = TOKEN
    return SlackWorkspace(token=TOKEN, channel="#node-ops", base_url=f"{stubs.url}/api/", timeout_seconds=5)


def test_the_report_is_posted_and_its_files_uploaded_under_it(stubs):
    png = report_charts.uptime_by_node(uptime())
    table = report_store.parquet_bytes(rates())
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Daily report* 2024-05-01"}}]
    answer = slack.post_with_files(workspace(stubs), "Daily report 2024-05-01 <!channel>", blocks,
                                   [("uptime_by_node.png", png, "Uptime by node"), ("rates.parquet", table, "Rates")])

    message, *uploads = stubs.records("slack")
    assert message["path"] == "/api/chat.postMessage"
    assert message["body"]["text"] == "Daily report 2024-05-01 &lt;!channel&gt;"
    assert message["body"]["channel"] == "#node-ops" and message["body"]["blocks"] == blocks

    by_path = {r["path"]: r for r in uploads}
    asked = [r["body"] for r in uploads if r["path"] == "/api/files.getUploadURLExternal"]
    assert [(a["filename"], int(a["length"])) for a in asked] == [("uptime_by_node.png", len(png)),
                                                                    ("rates.parquet", len(table))]
    [complete] = [r["body"] for r in uploads if r["path"] == "/api/files.completeUploadExternal"]
    # The channel's ID as chat.postMessage answered it (the block holds a name), in the message's thread.
    assert complete["channel_id"] == answer["channel"] == "C123" and complete["channel_id"] != "#node-ops"
    assert complete["thread_ts"] == answer["ts"]
    completed = json.loads(complete["files"])
    assert [f["title"] for f in completed] == ["Uptime by node", "Rates"]
    for content, file in zip((png, table), completed):
        sent = by_path[f"/upload/{file['id']}"]["body"]
        assert sent == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert [f["id"] for f in answer["files"]] == [f["id"] for f in completed]
    assert TOKEN not in json.dumps(stubs.records())


def test_files_that_fail_say_the_message_was_posted(stubs, monkeypatch):
    post_message = WebClient.chat_postMessage

    def posted_then_uploads_refused(client, **kwargs):
        answer = post_message(client, **kwargs)
        stubs.slack_errors.append("file_uploads_disabled")  # the stub's answer to the next call
        return answer

    monkeypatch.setattr(WebClient, "chat_postMessage", posted_then_uploads_refused)
    with pytest.raises(NotificationError, match=r"files of the message it posted \(ts \d+\.\d+\).*uploads_disabled"):
        slack.post_with_files(workspace(stubs), "report", None, [("a.png", b"x", "A")])
    paths = [r["path"] for r in stubs.records("slack")]
    assert paths == ["/api/chat.postMessage", "/api/files.getUploadURLExternal"]


# --------------------------------------------------------------------- store


def aggregates() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "chain": ["ethereum", "base", None],
            "strategy": ["arb", "backrun", "arb"],
            "bundles": [120, 40, 3],
            "net_usd": [1234.5, np.nan, -3.25],
            "gross_wei": [Decimal(2**256 - 1), None, Decimal("1E+3")],  # numeric(78,0): beyond any Arrow decimal
            "tips_wei": np.array([2**70, 5, 0], dtype=object),  # a day's wei sum passes 2**63: Python ints
            "expected_usd": [Decimal("1234.500000"), Decimal("0.000001"), Decimal("-7.000000")],
            "first_seen": pd.to_datetime(["2024-05-01T00:03Z", "2024-05-01T13:00Z", None], utc=True),
        },
        index=[10, 11, 12],  # dropped: a reader gets 0..n-1
    )


def test_parquet_round_trips_with_decimals_exact():
    frame = aggregates()
    back = report_store.read_parquet(report_store.parquet_bytes(frame))
    assert back.pop("tips_wei").tolist() == [2**70, 5, 0]  # exact, read back as Decimals
    pd.testing.assert_frame_equal(back, frame.drop(columns="tips_wei").reset_index(drop=True))
    assert back["gross_wei"].tolist() == [Decimal(2**256 - 1), None, Decimal(1000)]
    assert [str(d) for d in back["expected_usd"]] == ["1234.500000", "0.000001", "-7.000000"]  # scale kept


def day_files(store) -> dict[str, str]:
    """The day's objects: name in the day's folder -> sha256 of what the store returns."""
    found = {}
    for o in objectstore.list_objects(store, report_store.day_prefix(DAY)):
        out = io.BytesIO()
        objectstore.download(store, o.key, out)
        found[o.key.removeprefix(report_store.day_prefix(DAY) + "/")] = hashlib.sha256(out.getvalue()).hexdigest()
    return found


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_a_rerun_of_the_day_leaves_exactly_its_files(store, s3_server):
    first = {
        "report.md": b"# 2024-05-01\nfirst run\n",
        "charts/profit_by_hour.png": b"\x89PNG first",
        "charts/old_chart.png": b"\x89PNG not in the second run",
        "aggregates/by_chain_strategy.parquet": report_store.parquet_bytes(aggregates()),
    }
    stored = report_store.store_day_report(store, DAY, first)
    assert [(o.key, o.sha256) for o in stored] == [
        (f"reports/daily/2024-05-01/{name}", digest) for name, digest in sorted(sha256s(first).items())
    ]
    report_store.store_day_report(store, date(2024, 5, 2), {"report.md": b"# the next day"})

    second = {
        "report.md": b"# 2024-05-01\nre-run\n",
        "charts/profit_by_hour.png": b"\x89PNG second",
        "charts/uptime_by_node.png": b"\x89PNG new in the second run",
        "aggregates/by_chain_strategy.parquet": report_store.parquet_bytes(aggregates().head(2)),
    }
    report_store.store_day_report(store, DAY, second)
    assert day_files(store) == sha256s(second)
    next_day = objectstore.list_objects(store, "reports/daily/2024-05-02")
    assert [o.key for o in next_day] == ["reports/daily/2024-05-02/report.md"]  # another day is left alone

    raw = s3_server.raw_client()
    folder = f"{store.prefix}/reports/daily/2024-05-01"
    kinds = {name: raw.head_object(Bucket=BUCKET, Key=f"{folder}/{name}")["ContentType"] for name in second}
    assert kinds == {"report.md": "text/markdown; charset=utf-8", "charts/profit_by_hour.png": "image/png",
                     "charts/uptime_by_node.png": "image/png",
                     "aggregates/by_chain_strategy.parquet": "application/vnd.apache.parquet"}
    out = io.BytesIO()
    objectstore.download(store, "reports/daily/2024-05-01/aggregates/by_chain_strategy.parquet", out)
    back = report_store.read_parquet(out.getvalue())
    pd.testing.assert_frame_equal(back, aggregates().head(2).reset_index(drop=True))


def test_no_files_or_a_bad_name_write_nothing(store):
    with pytest.raises(InvalidInput, match="refusing to replace it with nothing"):
        report_store.store_day_report(store, DAY, {})
    with pytest.raises(InvalidInput, match="not allowed"):
        report_store.store_day_report(store, DAY, {"report.md": b"x", "../escaped.md": b"y"})
    assert objectstore.list_objects(store) == []
