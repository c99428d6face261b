"""The gate report's figures: written by real gate runs (tests/ncf/gated.py), inlined so the HTML stands alone, and
logged to the version's MLflow run."""

from __future__ import annotations

import html.parser
import re
from pathlib import Path

import pytest

from ncf import registry, report

# Attributes through which a browser would fetch something.
_URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "data", "poster", "action", "formaction", "background"}


class _Resources(html.parser.HTMLParser):
    """Every tag, and every URL-bearing attribute value, of an HTML document (inline SVG included)."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.svg_titles: list[str] = []
        self._in_text = False
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in _URL_ATTRIBUTES]
        self._in_text = tag == "text"

    def handle_endtag(self, tag):
        self._in_text = False

    def handle_data(self, data):
        if self._in_text and data.strip():
            self.texts.append(data.strip())


def _parse(path: Path) -> _Resources:
    parser = _Resources()
    parser.feed(path.read_text())
    return parser


def assert_stands_alone(page: Path) -> _Resources:
    """No tag or attribute that would make a browser fetch anything beyond the file itself."""
    parsed = _parse(page)
    text = page.read_text()
    assert not {"script", "link", "img", "iframe", "object", "embed", "image", "foreignobject"} & set(
        parsed.tags), parsed.tags
    assert parsed.urls and all(url.startswith("#") for url in parsed.urls), parsed.urls  # <use href="#..."> only
    assert not re.search(r"url\(\s*['\"]?(?!#)", text) and "@import" not in text
    return parsed


def test_the_report_has_both_figures_inline_and_fetches_nothing(gated_store):
    latest = gated_store.results[-1]
    page = Path(latest.report_uri) / "gate.html"
    parsed = assert_stands_alone(page)
    assert parsed.tags.count("svg") == 2
    text = page.read_text()
    assert "Gate metric across versions" in text and f"Training curves of the challenger v{latest.version}" in text
    # The history figure names every version; the curves figure has its three panels (tuning trials included).
    for version in ("v1", "v2", "v3", "v4"):
        assert version in parsed.texts
    for title in ("training loss per epoch", "validation metric per epoch", "tuning trials (validation)"):
        assert title in parsed.texts
    assert "promoted" in parsed.texts and "champion at that time" in parsed.texts
    for name in ("gate_history", "training_curves"):
        figure = Path(latest.report_uri) / f"{name}.svg"
        assert figure.read_text().startswith("<svg") and figure.read_text() in text


def test_a_version_without_a_training_run_says_so(gated_store):
    page = Path(gated_store.results[0].report_uri) / "gate.html"  # v1: a package made without MLflow training
    parsed = assert_stands_alone(page)
    assert parsed.tags.count("svg") == 1 and "no MLflow training run for this version" in page.read_text()


def test_the_figures_are_logged_to_the_versions_run(gated_store):
    client = registry.client(gated_store.tracking_uri)
    latest = gated_store.results[-1]
    run_id = client.get_model_version("ncf", latest.version).run_id
    assert run_id == gated_store.train_run_id  # trained in this store: the version lives in its training run
    names = {Path(a.path).name for a in client.list_artifacts(run_id, report.MLFLOW_DIR)}
    assert names == {"gate.html", "gate_history.svg", "gate_history.png", "training_curves.svg",
                     "training_curves.png"}


def test_training_history_reads_the_exported_models_epochs_and_the_trials(gated_store):
    curves, trials = report.training_history(gated_store.tracking_uri, gated_store.train_run_id)
    assert set(curves) == {"loss", "val_hr", "val_ndcg"}  # one NeuMF, no refit: the selection pass only
    assert [step for step, _ in curves["loss"]] == [1, 2, 3]  # step 0 (the final summary) is not an epoch
    assert trials == pytest.approx(gated_store.trial_values)


def test_history_figure_marks_promotions_and_shows_a_baseline_when_tagged(gated_store):
    from ncf.status import version_history

    versions = version_history(gated_store.tracking_uri, "ncf")
    versions[-1].baseline_score = 0.05  # what a version tagged gate.baseline_score reads as
    figure = report.gate_history(versions, versions[-1].version, "ndcg@10")
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["challenger", "champion at that time", "baseline", "promoted"]
    stars = figure.axes[0].collections[0].get_offsets()
    assert len(stars) == sum(v.promoted for v in versions) == 2
