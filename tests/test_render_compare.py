"""`fimaudit render` (HTML report) and `fimaudit compare` (paired audits), on real audits."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import fimaudit
from fimaudit.comparison import compare, median_interval
from fimaudit.errors import UsageError
from fimaudit.render import render_html
from fimaudit.report import AuditReport

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
DATA = ROOT / "examples" / "digits_test.npy"


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), np.load(DATA)[:40], directions=16)


def scaled(report: AuditReport, factors: np.ndarray) -> AuditReport:
    """The same audit with every lambda (and its interval) multiplied by a per-sample factor."""
    samples = [
        s.model_copy(update={"lambda_max": s.lambda_max * f, "lambda_max_ci": (s.lambda_max_ci[0] * f, s.lambda_max_ci[1] * f)})
        for s, f in zip(report.samples, factors)
    ]
    return report.model_copy(update={"samples": samples})


class Tags(HTMLParser):
    """Counts elements and checks that every opened non-void element is closed in order."""

    VOID: ClassVar[frozenset[str]] = frozenset({"meta", "br"})  # SVG shapes here are self-closed or closed explicitly

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.count: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.count[tag] = self.count.get(tag, 0) + 1
        for name, value in attrs:
            if name == "class" and value:
                self.classes[value] = self.classes.get(value, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.count[tag] = self.count.get(tag, 0) + 1
        for name, value in attrs:
            if name == "class" and value:
                self.classes[value] = self.classes.get(value, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    assert tags.stack == []
    return tags


def test_html_holds_every_sample_and_escapes_the_report(report: AuditReport) -> None:
    hostile = report.model_copy(update={"model": report.model.model_copy(update={"reference": "<script>alert(1)</script>.onnx"})})
    page = render_html(hostile, signers=["abc (auditor.pub)"])
    tags = parse(page)
    assert "script" not in tags.count  # the reference became text, not markup
    assert "<script>alert(1)</script>.onnx" in "".join(tags.text)
    assert tags.classes["sample"] == len(report.samples) and tags.count["svg"] == 2
    assert sum(1 for _ in re_rows(page)) == len(report.samples)
    median = report.summary.lambda_max.median
    assert f"{median:.4g}" in page and "abc (auditor.pub)" in page


def re_rows(page: str) -> list[str]:
    table = page.split("<h2>Samples</h2>")[1]
    return re.split(r"<tr[ >]", table)[2:]  # after the header row; a flagged row has a class


def test_compare_recovers_a_known_ratio(report: AuditReport) -> None:
    result = compare(report, scaled(report, np.full(len(report.samples), 4.0)))
    assert result.median_log10_ratio == pytest.approx(math.log10(4))
    low, high = result.median_log10_ratio_ci
    assert low == pytest.approx(math.log10(4)) and high == pytest.approx(math.log10(4))
    # The verdict names what was measured (sensitivity), never robustness.
    assert result.verdict == "B more sensitive: higher lambda_max" and result.fraction_b_lower == 0
    assert compare(report, scaled(report, np.full(len(report.samples), 0.5))).verdict == "B less sensitive: lower lambda_max"
    same = compare(report, report)
    assert same.verdict == "no clear difference in lambda_max" and same.median_log10_ratio == 0 and same.same_prediction == 1
    assert same.caveats == [] and result.caveats == []  # the same confidences: calibration cannot explain a ratio


def test_compare_interval_covers_noise_without_a_shift(report: AuditReport) -> None:
    noise = np.exp(np.random.default_rng(3).normal(0, 0.5, len(report.samples)))
    result = compare(report, scaled(report, noise))
    low, high = result.median_log10_ratio_ci
    assert low < 0 < high and result.verdict == "no clear difference in lambda_max"
    # The bootstrap interval of a median: wider than zero, within the observed range.
    values = np.log10(noise)
    lo2, hi2 = median_interval(values, 0.95, 10_000, 1)
    assert values.min() <= lo2 < np.median(values) < hi2 <= values.max()


def test_compare_refuses_different_data(report: AuditReport) -> None:
    other = report.model_copy(update={"data": report.data.model_copy(update={"sha256": "0" * 64})})
    with pytest.raises(UsageError, match="audited different inputs"):
        compare(report, other)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], check=False, capture_output=True, text=True, timeout=300)


def test_cli_render_and_compare(tmp_path: Path) -> None:
    assert run("keygen", "--out", str(tmp_path / "k")).returncode == 0
    signed, plain = tmp_path / "r.dsse.json", tmp_path / "plain.json"
    for out, extra in ((signed, ["--sign", str(tmp_path / "k.key")]), (plain, [])):
        made = run("audit", str(EXAMPLE), "--data", str(DATA), "--limit", "8", "--directions", "16", "--out", str(out), "-q", *extra)
        assert made.returncode == 0, made.stderr
    refused = run("render", str(signed))
    assert refused.returncode == 2 and "pass --key" in refused.stderr
    rendered = run("render", str(signed), "--key", str(tmp_path / "k.pub"), "--out", str(tmp_path / "r.html"))
    assert rendered.returncode == 0, rendered.stderr
    assert "k.pub" in (tmp_path / "r.html").read_text()
    parse((tmp_path / "r.html").read_text())
    compared = run("compare", str(plain), str(signed), "--key", str(tmp_path / "k.pub"))
    assert compared.returncode == 5 and "unsigned fimaudit report" in compared.stderr  # with --key, both must be signed
    assert run("compare", str(signed), str(signed), "--key", str(tmp_path / "k.pub")).returncode == 0
    both = run("compare", str(plain), str(plain), "--json", str(tmp_path / "c.json"))
    said = " ".join(both.stdout.split())  # the console wraps long lines
    assert both.returncode == 0 and "verdict: no clear difference in lambda_max (sensitivity, not robustness" in said
    assert json.loads((tmp_path / "c.json").read_text())["n"] == 8
