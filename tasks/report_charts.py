"""PNG charts for the daily profit and operations report.

Each function takes a small DataFrame the report flow already aggregated and
returns the PNG's bytes, ready for Slack and the object store. They never
raise on an empty frame or on NaN: a report with a "no data" chart says more
than a report that failed. A missing value is left out of sums, and where a
bar would claim a value (a rate, an uptime) it is labelled "n/a", not drawn
as 0.

Figures are built with matplotlib's object API on an explicit Agg canvas, not
through pyplot: importing this module or rendering never needs a display, no
process-wide backend is switched for other code, and a figure is not kept in
pyplot's registry (which is what `plt.close` is for): once rendered it is
garbage like any object, so memory stays flat over any number of charts.
Every chart is WIDTH x HEIGHT pixels.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

WIDTH, HEIGHT, DPI = 900, 450, 100
COST_COLUMNS = {
    "base_fee_usd": "base fee",
    "priority_fee_usd": "priority fee",
    "l1_fee_usd": "L1 data fee",
    "builder_tip_usd": "builder tip",
    "flash_loan_fee_usd": "flash-loan fee",
}
GOOD, BAD, TARGET = "#2e7d32", "#c62828", "#555555"
_usd = FuncFormatter(lambda v, _: f"-${-v:,.0f}" if v < 0 else f"${v:,.0f}")


def _figure(title: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _png(fig: Figure) -> bytes:
    # No bbox_inches="tight": it would change the size; constrained layout fits the labels instead.
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _legend(fig: Figure) -> None:
    # Right of the plot: inside it, a legend would hide bars.
    fig.legend(loc="outside right upper", fontsize="small", frameon=False)


def _no_data(title: str) -> bytes:
    fig, ax = _figure(title)
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=20, color=TARGET, transform=ax.transAxes)
    return _png(fig)


def _names(values: pd.Series) -> pd.Series:
    """Category labels: a missing name is still a row someone should see."""
    return values.fillna("unknown").astype(str)


def _colours(names: list[str]) -> dict[str, tuple]:
    """One colour per name, stable for a given set of names (sorted), so a chain keeps its colour across charts."""
    palette = colormaps["tab10"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(names))}


def profit_by_hour(hourly: pd.DataFrame) -> bytes:
    """Net profit per hour (UTC), stacked by chain; losses stack below the zero line."""
    title = "Net profit by hour (UTC)"
    if hourly.empty:
        return _no_data(title)
    frame = hourly.assign(hour=pd.to_datetime(hourly["hour"], utc=True), chain=_names(hourly["chain"]))
    frame = frame.dropna(subset=["hour"])  # a row without its hour has no bar to go in
    if frame.empty:
        return _no_data(title)
    table = frame.pivot_table(index="hour", columns="chain", values="net_usd", aggfunc="sum", fill_value=0.0)
    # Every hour gets a slot, so an hour with no trades shows as a gap, not as a shifted bar.
    hours = pd.date_range(frame["hour"].min(), frame["hour"].max(), freq="h")
    table = table.reindex(hours, fill_value=0.0).fillna(0.0)
    days = sorted({h.date().isoformat() for h in hours})
    fig, ax = _figure(f"{title}, {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else ""))
    x = np.arange(len(hours))
    up, down = np.zeros(len(hours)), np.zeros(len(hours))
    for chain, colour in _colours(list(table.columns)).items():
        values = table[chain].to_numpy(dtype=float)
        # Positive and negative parts stack separately, or a loss would hide under a profit.
        gains, losses = np.clip(values, 0, None), np.clip(values, None, 0)
        ax.bar(x, gains, bottom=up, color=colour, label=chain, width=0.8)
        ax.bar(x, losses, bottom=down, color=colour, width=0.8)
        up, down = up + gains, down + losses
    ax.axhline(0, color="black", linewidth=0.8)
    step = max(1, len(hours) // 12)
    ax.set_xticks(x[::step], [h.strftime("%H:00") if len(days) == 1 else h.strftime("%d %H:00") for h in hours[::step]])
    ax.yaxis.set_major_formatter(_usd)
    ax.set_ylabel("net USD")
    _legend(fig)
    return _png(fig)


def cost_breakdown(costs: pd.DataFrame) -> bytes:
    """What each chain's trades cost, by kind of cost, as stacked horizontal bars (largest total on top)."""
    title = "Costs by chain (USD)"
    if costs.empty:
        return _no_data(title)
    table = costs.assign(chain=_names(costs["chain"])).groupby("chain")[list(COST_COLUMNS)].sum()  # NaN adds 0
    table = table.loc[table.sum(axis=1).sort_values().index]  # barh draws bottom-up: the largest ends on top
    fig, ax = _figure(title)
    y = np.arange(len(table))
    left = np.zeros(len(table))
    palette = _colours(list(COST_COLUMNS))
    for column, label in COST_COLUMNS.items():
        values = table[column].to_numpy(dtype=float)
        ax.barh(y, values, left=left, color=palette[column], label=label, height=0.6)
        left += values
    ax.set_yticks(y, list(table.index))
    ax.xaxis.set_major_formatter(_usd)
    _legend(fig)
    return _png(fig)


def _bars_against_target(ax: Axes, names: list[str], values: np.ndarray, target: float, decimals: int) -> None:
    """Bars green at or above the target, red below, labelled with their value ("n/a" for NaN)."""
    x = np.arange(len(names))
    known = ~np.isnan(values)
    ax.bar(x[known], values[known], color=[GOOD if v >= target else BAD for v in values[known]], width=0.6)
    ax.axhline(target, color=TARGET, linestyle="--", linewidth=1.2, label=f"target {target:.{decimals}%}")
    low = ax.get_ylim()[0]
    for xi, v in zip(x, values):
        ax.annotate("n/a" if np.isnan(v) else f"{v:.{decimals}%}", (xi, low if np.isnan(v) else v),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x, names, rotation=20 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_xlim(-0.5, len(names) - 0.5)  # a NaN at either end still gets its slot
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=decimals))
    _legend(ax.figure)


def success_by_strategy(rates: pd.DataFrame, target: float = 0.85) -> bytes:
    """Each strategy's share of successful bundles against the KPI target."""
    title = "Success rate by strategy"
    if rates.empty:
        return _no_data(title)
    fig, ax = _figure(title)
    ax.set_ylim(0, 1.08)  # room for the labels above a 100% bar
    _bars_against_target(ax, list(_names(rates["strategy"])), rates["success_rate"].to_numpy(dtype=float), target, 0)
    return _png(fig)


def uptime_by_node(uptime: pd.DataFrame, target: float = 0.9995) -> bytes:
    """Each node's uptime against the SLO, on an axis zoomed so 99.9% and 100% look different."""
    title = "Uptime by node"
    if uptime.empty:
        return _no_data(title)
    values = uptime["uptime"].to_numpy(dtype=float)
    known = values[~np.isnan(values)]
    # From a little below the lowest of the values and the target up to just above 100%:
    # on a 0..100% axis every healthy node would be the same full bar.
    low = min(known.min(initial=target), target)
    span = max(1.0 - low, 0.0005)
    fig, ax = _figure(title)
    ax.set_ylim(low - span * 0.6, 1.0 + span * 0.25)
    _bars_against_target(ax, list(_names(uptime["node"])), values, target, 3)
    return _png(fig)
