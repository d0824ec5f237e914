"""The SVG charts of the admin page (pure functions, no database): valid XML,
accessible names, escaping of hostile labels, scales and the daily window."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date

import pytest

from credits_db.http import charts
from credits_db.http._admin_queries import DailyLedger, DailyTotal
from credits_db.http.templates import daily_series

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script> & \'quotes\''


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    assert root.tag == f"{SVG}svg"
    return root


def _accessible_name(root: ET.Element) -> tuple[str, str]:
    assert root.get("role") == "img"
    chart_id = root.get("id")
    assert root.get("aria-labelledby") == f"{chart_id}-title {chart_id}-desc"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and desc is not None
    assert title.get("id") == f"{chart_id}-title" and desc.get("id") == f"{chart_id}-desc"
    return title.text or "", desc.text or ""


def test_bar_chart_is_valid_accessible_svg_and_escapes_labels() -> None:
    svg = charts.bar_chart("chart-x", f"Title {HOSTILE}", f"Desc {HOSTILE}",
                           ["member", HOSTILE],
                           [charts.Series("Total", [350, 1000]),
                            charts.Series(HOSTILE, [0, 700])], unit="credits")
    assert "<script" not in svg
    root = _parse(svg)
    assert _accessible_name(root) == (f"Title {HOSTILE}", f"Desc {HOSTILE}")
    bars = root.findall(f"{SVG}rect")
    tips = [bar.findtext(f"{SVG}title") for bar in bars if bar.find(f"{SVG}title") is not None]
    assert f"{HOSTILE}, {HOSTILE}: 700 credits" in tips
    assert "member, Total: 350 credits" in tips
    # The longest bar spans the plot; the others scale to it.
    widths = {tip: float(bar.get("width", "0")) for tip, bar in zip(tips, bars, strict=False)}
    assert widths["member, Total: 350 credits"] == pytest.approx(
        widths[f"{HOSTILE}, Total: 1,000 credits"] * 0.35, rel=0.01)


def test_daily_chart_stacks_up_and_down_and_escapes_sources() -> None:
    days = [date(2025, 1, 1), date(2025, 1, 2)]
    svg = charts.daily_chart("chart-d", "Daily", "Per day", days,
                             [charts.Series("signup (allocated)", [350, 0]),
                              charts.Series(f"{HOSTILE} (spent)", [-100, -50])])
    assert "<script" not in svg
    root = _parse(svg)
    assert _accessible_name(root) == ("Daily", "Per day")
    tips = [r.findtext(f"{SVG}title") for r in root.iter(f"{SVG}rect")
            if r.find(f"{SVG}title") is not None]
    assert tips == ["2025-01-01, signup (allocated): 350 credits",
                    f"2025-01-01, {HOSTILE} (spent): -100 credits",
                    f"2025-01-02, {HOSTILE} (spent): -50 credits"]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "+350" in texts and "\u2212100" in texts and "01-01" in texts


@pytest.mark.parametrize("render", [
    lambda: charts.bar_chart("empty", "T", "D", [], []),
    lambda: charts.daily_chart("empty", "T", "D", [date(2025, 1, 1)], []),
])
def test_empty_charts_say_so(render: object) -> None:
    assert callable(render)
    root = _parse(render())
    assert any((t.text or "").startswith("No ") for t in root.iter(f"{SVG}text"))


def test_bad_ids_and_series_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="chart id"):
        charts.bar_chart('x" onload="alert(1)', "T", "D", [], [])
    with pytest.raises(ValueError, match="2 values for 1 categories"):
        charts.bar_chart("x", "T", "D", ["a"], [charts.Series("s", [1, 2])])
    with pytest.raises(ValueError, match="1 values for 2 days"):
        charts.daily_chart("x", "T", "D", [date(2025, 1, 1), date(2025, 1, 2)],
                           [charts.Series("s", [1])])


@pytest.mark.parametrize(("largest", "step"), [(0, 1), (3, 1), (10, 5), (350, 100),
                                               (10_000, 5_000), (12_345, 5_000)])
def test_nice_step(largest: int, step: int) -> None:
    assert charts.nice_step(largest) == step


def test_daily_series_fills_the_window_and_splits_by_direction() -> None:
    today = date(2025, 3, 30)
    ledger = DailyLedger(today, [
        DailyTotal(date(2025, 2, 1), "signup", "credit", 999),  # outside the 30 days
        DailyTotal(date(2025, 3, 1), "signup", "credit", 350),
        DailyTotal(today, "search", "debit", -25),
        DailyTotal(today, "search", "credit", 5),
    ])
    window, series = daily_series(ledger)
    assert len(window) == 30 and window[0] == date(2025, 3, 1) and window[-1] == today
    by_name = {s.name: list(s.values) for s in series}
    assert sorted(by_name) == ["search (allocated)", "search (spent)", "signup (allocated)"]
    assert by_name["signup (allocated)"][0] == 350 and sum(by_name["signup (allocated)"]) == 350
    assert by_name["search (spent)"][-1] == -25


def test_daily_chart_drops_an_extreme_label_that_would_overlap_zero() -> None:
    root = _parse(charts.daily_chart("chart-d", "T", "D", [date(2025, 1, 1)],
                                     [charts.Series("up", [10_000]), charts.Series("down", [-10])]))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "+10,000" in texts and "0" in texts and "\u221210" not in texts
