"""Kaplan–Meier plots: PNG/SVG files and the self-contained HTML page."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from biofed.analytics import (
    DisclosureRules,
    KaplanMeierResult,
    Query,
    QueryTable,
    answer,
    km_html,
    plot_km,
    start,
)
from biofed.core import ConfigurationError


def km_result(levels: list[str]) -> KaplanMeierResult:
    rng = np.random.default_rng(4)
    tables = {}
    for i in range(3):
        n = 80
        group = np.asarray([levels[j % len(levels)] for j in range(n)], dtype=object)
        tables[f"s{i}"] = QueryTable(
            name=f"t{i}",
            columns={
                "time": np.round(rng.exponential(10, n), 1),
                "event": rng.integers(0, 2, n).astype(float),
                "arm": group,
            },
            kinds={"time": "numeric", "event": "numeric", "arm": "categorical"},
            ids=np.arange(n),
            is_test=np.zeros(n, bool),
        )
    query = Query(
        kind="km", options={"time": "time", "event": "event", "group": "arm", "levels": levels}
    )
    analysis = start(query, DisclosureRules())
    while not analysis.done:
        req = analysis.request()
        analysis = analysis.add({s: answer(req, t, DisclosureRules()) for s, t in tables.items()})
    result = analysis.result()
    assert isinstance(result, KaplanMeierResult)
    return result


def test_png_and_svg(tmp_path: Path) -> None:
    res = km_result(["control", "treated"])
    png = plot_km(res, tmp_path / "km.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in png.read_bytes()[:200]
    svg = plot_km(res, tmp_path / "km.SVG")
    root = ET.fromstring(svg.read_bytes())
    assert root.tag.endswith("svg")
    texts = {"".join(el.itertext()).strip() for el in root.iter() if el.tag.endswith("text")}
    assert {"control", "treated", "at risk"} <= texts
    first = res.curves[0]
    assert str(int(first.at_risk[0])) in texts  # numbers at risk under the axis
    assert "<10" in texts  # past the released region: only "fewer than k"
    with pytest.raises(ConfigurationError, match=r"\.png or \.svg"):
        plot_km(res, tmp_path / "km.pdf")


def test_html_is_self_contained_and_escaped() -> None:
    res = km_result(["<script>alert(1)</script>", "$\\undefined$"])
    page = km_html(res)
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "<script" not in page
    assert "<metadata" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', ""
    )
    assert "&lt;script&gt;" in page
    c = res.curves[1]
    assert f"<td>{c.times[0]:g}</td><td>{c.estimate[0]:.4f}</td>" in page
    assert "coarsened" in page
