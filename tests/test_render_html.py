"""The HTML report's plots, read as SVG: a legend for the point colours, confidence 1.0 placed and
explained, tick labels inside the picture, a histogram axis with counts, interval bars that show
however narrow, and the flags explained beside the table."""
from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import fimaudit
from fimaudit.report import FLAG_MEANINGS
from fimaudit.render import render_html
from fimaudit.report import AuditReport, SampleResult

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
DATA = ROOT / "examples" / "digits_test.npy"
SVG = "{http://www.w3.org/2000/svg}"
GLYPH = 0.7  # a generous glyph width in ems: a label estimated this wide must still fit
MIN_VISIBLE = 8.0  # pixels: an interval bar must reach past its dot (5 px across)


@pytest.fixture(scope="module")
def report() -> AuditReport:
    """A real audit; its intervals are all far narrower than a pixel on the plot."""
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), np.load(DATA)[:40], directions=128)


def changed(report: AuditReport, changes: dict[int, dict[str, object]]) -> AuditReport:
    """`report` with some samples' fields replaced (index -> field -> value)."""
    samples = [s.model_copy(update=changes.get(s.index, {})) for s in report.samples]
    return report.model_copy(update={"samples": samples})


def plots(page: str) -> tuple[ET.Element, ET.Element]:
    scatter, histogram = (ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL))
    assert scatter.get("aria-label", "").startswith("λ_max") and histogram.get("aria-label", "").startswith("ε_τ")
    return scatter, histogram


def view_width(svg: ET.Element) -> float:
    box = svg.get("viewBox")
    return float(box.split()[2]) if box else float(svg.get("width", "0"))


def extent(text: ET.Element) -> tuple[float, float]:
    """The horizontal span a text element's label may take, estimated generously."""
    width = len(text.text or "") * GLYPH * float(text.get("font-size", "16"))
    x = float(text.get("x", "0"))
    anchor = text.get("text-anchor", "start")
    left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
    return left, left + width


def labels(svg: ET.Element, anchor: str) -> list[ET.Element]:
    """Axis tick labels: x ticks are centred under the axis, y ticks end left of it."""
    return [t for t in svg.iter(f"{SVG}text") if t.get("text-anchor") == anchor and t.get("transform") is None
            and re.fullmatch(r"1e-?\d+|\d+|0", t.text or "")]


def points(scatter: ET.Element) -> list[ET.Element]:
    return [c for c in scatter.iter(f"{SVG}circle") if c.get("class") == "sample"]


def pixels_per_decade(scatter: ET.Element) -> float:
    ticks = sorted((int(t.text[2:]), float(t.get("y", "0"))) for t in labels(scatter, "end") if t.text.startswith("1e"))
    (e0, y0), (e1, y1) = ticks[0], ticks[-1]
    return abs(y1 - y0) / (e1 - e0)


def flagged(report: AuditReport) -> AuditReport:
    """Four inputs below resolution (two of them with confidence 1.0), two with another flag."""
    saturated = {"confidence": 1.0, "flags": ["saturated", "below_resolution"]}
    return changed(report, {
        3: saturated, 19: saturated, 2: {"flags": ["below_resolution"]}, 8: {"flags": ["below_resolution"]},
        0: {"flags": ["step_nonlocal"]}, 12: {"flags": ["step_nonlocal"]},
    })


# --------------------------------------------------------------------------- the scatter plot


def test_every_text_fits_inside_the_picture(report: AuditReport) -> None:
    for page in (render_html(report), render_html(flagged(report))):
        for svg in plots(page):
            width = view_width(svg)
            for text in svg.iter(f"{SVG}text"):
                if text.get("transform") is None:
                    left, right = extent(text)
                    assert 0 <= left and right <= width, f"{text.text!r} spans {left:.0f}-{right:.0f} of 0-{width:.0f}"


def test_x_tick_labels_do_not_collide(report: AuditReport) -> None:
    for page in (render_html(report), render_html(flagged(report))):
        for svg in plots(page):
            spans = sorted(extent(t) for t in labels(svg, "middle"))
            assert len(spans) >= 2
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_the_legend_names_each_colour_drawn(report: AuditReport) -> None:
    marked = flagged(report)
    scatter, _ = plots(render_html(marked))
    legend = [g for g in scatter.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert len(legend) == 1
    children = list(legend[0])
    entries = {marker.get("fill"): text.text or "" for marker, text in zip(children[::2], children[1::2])}
    by_sample = dict(zip((s.index for s in marked.samples), points(scatter)))
    red = by_sample[2].get("fill")
    assert "below_resolution" in entries[red] and "upper bound" in entries[red]
    assert "flags" in entries[by_sample[0].get("fill")] and "no flag" in entries[by_sample[1].get("fill")]
    assert len({red, by_sample[0].get("fill"), by_sample[1].get("fill")}) == 3
    assert any("interval" in text for text in entries.values())


def test_confidence_one_is_drawn_apart_and_explained(report: AuditReport) -> None:
    marked = flagged(report)
    page = render_html(marked)
    scatter, _ = plots(page)
    by_sample = dict(zip((s.index for s in marked.samples), points(scatter)))
    at_one = [by_sample[3], by_sample[19]]
    assert all(c.get("fill") == "white" for c in at_one)  # open
    others = [float(c.get("cx", "0")) for i, c in by_sample.items() if i not in (3, 19)]
    first_decade = min(float(t.get("x", "0")) for t in labels(scatter, "middle") if t.text.startswith("1e"))
    assert all(float(c.get("cx", "0")) < first_decade <= min(others) for c in at_one)
    # Confidence 1.0 does not stretch the log axis down to 1e-12: the decades are those of the others.
    plain, _ = plots(render_html(report))
    assert [t.text for t in labels(scatter, "middle")] == ["0"] + [t.text for t in labels(plain, "middle")]
    legend = "".join(t.text or "" for t in scatter.iter(f"{SVG}text"))
    assert "confidence 1.0" in legend and "1e-12" in legend
    assert "2 of 40 inputs have confidence 1.0" in page and "1e-12" in page.split("<h2>Samples")[0]


def test_narrow_intervals_stay_visible(report: AuditReport) -> None:
    scatter, _ = plots(render_html(report))
    bars = [line for line in scatter.iter(f"{SVG}line") if line.get("class") == "ci"]
    caps = [path for path in scatter.iter(f"{SVG}path") if path.get("class") == "ci-cap"]
    assert len(bars) == len(report.samples)
    for bar in bars:
        assert abs(float(bar.get("y1", "0")) - float(bar.get("y2", "0"))) >= MIN_VISIBLE
    assert len(caps) == len(bars)


def test_wide_intervals_are_drawn_at_their_true_length(report: AuditReport) -> None:
    lam = report.samples[5].lambda_max
    wide = changed(report, {5: {"lambda_max_ci": (lam / 100, lam * 100)}})
    scatter, _ = plots(render_html(wide))
    bar = [line for line in scatter.iter(f"{SVG}line") if line.get("class") == "ci"][5]
    length = abs(float(bar.get("y1", "0")) - float(bar.get("y2", "0")))
    assert length == pytest.approx(4 * pixels_per_decade(scatter), abs=0.2)


# --------------------------------------------------------------------------- the histogram


def test_histogram_counts_have_an_axis(report: AuditReport) -> None:
    _, histogram = plots(render_html(report))
    ticks = [(int(t.text or ""), float(t.get("y", "0"))) for t in labels(histogram, "end")]
    assert len(ticks) >= 3 and ticks[0][0] == 0
    counts = [int((t.text or "").split()[0]) for t in histogram.iter(f"{SVG}title")]
    assert sum(counts) == len(report.samples) and ticks[-1][0] >= max(counts)
    steps = {b[0] - a[0] for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1  # evenly spaced
    per_count = (ticks[0][1] - ticks[-1][1]) / ticks[-1][0]
    tallest = max(float(r.get("height", "0")) for r in histogram.iter(f"{SVG}rect"))
    assert tallest == pytest.approx(max(counts) * per_count, abs=0.2)


def test_histogram_of_one_input_still_has_three_ticks(report: AuditReport) -> None:
    one = report.model_copy(update={"samples": report.samples[:1]})
    _, histogram = plots(render_html(one))
    assert [t.text for t in labels(histogram, "end")] == ["0", "1", "2"]


# --------------------------------------------------------------------------- the table


def rows(page: str) -> list[str]:
    return re.findall(r"<tr[ >].*?</tr>", page.split("<h2>Samples</h2>")[1], re.DOTALL)[1:]


def test_flags_are_marked_and_explained(report: AuditReport) -> None:
    marked = flagged(report)
    page = render_html(marked)
    table = rows(page)
    assert len(table) == len(marked.samples)
    for s, row in zip(marked.samples, table):
        assert row.startswith("<tr class='flagged'>") == bool(s.flags)
    samples = page.split("<h2>Samples</h2>")[1]
    for flag, n in (("below_resolution", 4), ("saturated", 2), ("step_nonlocal", 2)):
        assert f"<dt>{flag} ({n} of 40)</dt><dd>{FLAG_MEANINGS[flag]}</dd>".replace("'", "&#x27;") in samples
    assert "No sample carries a flag" in render_html(changed(report, {}))


def confidence_cell(page: str, sample: SampleResult) -> str:
    return re.findall(r"<td>(.*?)</td>", rows(page)[sample.index])[2]


def test_confidence_under_one_never_reads_as_one(report: AuditReport) -> None:
    near = changed(report, {0: {"confidence": 0.9999747}, 1: {"confidence": 1.0}, 2: {"confidence": 0.5}})
    page = render_html(near)
    assert [confidence_cell(page, near.samples[i]) for i in range(3)] == ["1 − 2.5e-05", "1 exactly", "0.5000"]
