"""The gate report's figures: written by real gate runs (tests/ncf/gated.py), inlined so the HTML stands alone, and
logged to the version's MLflow run."""

from __future__ import annotations

import dataclasses
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


def test_history_figure_marks_promotions_and_draws_the_baseline_of_each_version(gated_store):
    from ncf.status import version_history

    versions = version_history(gated_store.tracking_uri, "ncf")
    figure = report.gate_history(versions, versions[-1].version, "ndcg@10")
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["challenger", "champion at that time", "popularity baseline", "promoted"]
    (line,) = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "popularity baseline"]
    # from each version's gate.baseline_score tag: the baseline the gate scored on that version's partition
    assert list(line.get_ydata()) == pytest.approx([r.baseline_score for r in gated_store.results], abs=1e-6)
    stars = figure.axes[0].collections[0].get_offsets()
    assert len(stars) == sum(v.promoted for v in versions) == 2
    old = [dataclasses.replace(v, baseline_score=None) for v in versions]  # versions gated before the baseline
    labels = [t.get_text() for t in report.gate_history(old, old[-1].version, "ndcg@10").axes[0].get_legend()
              .get_texts()]
    assert "popularity baseline" not in labels


def _score_row(page: str, metric: str) -> list[str]:
    match = re.search(rf"<tr><td>{re.escape(metric)}</td>((?:<td>[^<]*</td>)+)</tr>", page)
    assert match, metric
    return re.findall(r"<td>([^<]*)</td>", match[1])


def test_the_report_puts_challenger_champion_and_baseline_side_by_side(gated_store):
    import json

    latest = gated_store.results[-1]
    page = (Path(latest.report_uri) / "gate.html").read_text()
    assert re.search(r"<th>challenger v4</th><th>champion v3</th><th>baseline \(popularity\)</th>", page)
    for metric in ("ndcg@10", "hr@10", "full_ndcg@10"):
        assert _score_row(page, metric) == [f"{latest.challenger_metrics[metric]:.4f}",
                                            f"{latest.champion_metrics[metric]:.4f}",
                                            f"{latest.baseline_metrics[metric]:.4f}"]
    assert f"Popularity baseline (the partition's training interaction counts, the same rows): " \
           f"{latest.baseline_score:.4f}" in page and "min_baseline_gain 0.0" in page
    saved = json.loads((Path(latest.report_uri) / "gate.json").read_text())
    assert saved["baseline_metrics"] == pytest.approx(latest.baseline_metrics)


def test_the_candidates_table_shows_the_selection_with_the_chosen_one_marked(gated_store):
    v1, _, v3, v4 = gated_store.results
    page = (Path(v3.report_uri) / "gate.html").read_text()
    assert "Model selection: candidates on validation" in page and "chose <b>ease</b>" in page
    table = page[page.index("<table class=candidates>"):]
    table = table[:table.index("</table>")]
    assert "<th>candidate</th><th>val_hr@10</th><th>val_ndcg@10</th><th>trials</th><th>settings</th>" in table
    rows = re.findall(r"<tr( class=chosen)?><td>([a-z]+)( <b>&#9733; chosen</b>)?</td>(.*?)</tr>", table)
    assert [(name, bool(marked), bool(star)) for marked, name, star, _ in rows] == [
        ("ease", True, True), ("ials", False, False), ("popularity", False, False)]
    assert re.findall(r"<td(?: class=settings)?>([^<]*)</td>", rows[0][3]) == ["0.6301", "0.3912", "8",
                                                                              "ease_lambda=250"]
    assert re.findall(r"<td(?: class=settings)?>([^<]*)</td>", rows[2][3]) == ["0.2750", "0.1204", "1", "&ndash;"]
    for result in (v1, v4):  # packages without a selection summary: no table
        assert "Model selection" not in (Path(result.report_uri) / "gate.html").read_text()


def test_candidates_summary_in_either_shape_and_file():
    from types import SimpleNamespace

    from ncf.gate import candidates_summary

    table = {"ease": {"val_ndcg@10": 0.39}, "ials": {"val_ndcg@10": 0.35}}
    nested = {"chosen": "ease", "candidates": table}
    assert candidates_summary(SimpleNamespace(metrics={"candidates": nested}, config={})) == nested
    assert candidates_summary(SimpleNamespace(metrics={}, config={"candidates": nested})) == nested
    assert candidates_summary(SimpleNamespace(metrics={"chosen": "ials", "candidates": table}, config={})) == {
        "chosen": "ials", "candidates": table}
    assert candidates_summary(SimpleNamespace(metrics={"ndcg@10": 0.3}, config={"family": "ncf"})) is None
    assert report.candidates_table(None) == "" and report.candidates_table({"chosen": "x", "candidates": {}}) == ""
