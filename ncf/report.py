"""The gate report as people read it: gate.html with the decision, the numbers, and two figures drawn with matplotlib
and inlined as SVG, so the file stands alone (no script, stylesheet, font or image is fetched).

- **Gate metric across versions** (`gate_history`): every version of the model by run date -- the challenger's
  score, the champion's score at that time and the popularity baseline's (all on that run's partition; the
  baseline from the version's `gate.baseline_score` tag, absent on versions gated before the gate scored one);
  promotions are marked. From the registry's version tags (ncf/status.py).
- **Training curves** (`training_curves`): the challenger's loss and validation metric per epoch from its MLflow
  training run (`train_run_id` tag; the exported model's keys `loss`, `val_ndcg`, `val_hr`, with `refit_` /
  `m<k>_` prefixes for the refit pass and ensemble members), and the tuning trials when tuning ran: the training
  run's child runs (`mlflow.parentRunId`, as Optuna's MLflow callback logs them with nested runs), their metric
  `value` (else their first `val_*` metric) in start order.

The page's table puts the challenger, the champion and the popularity baseline side by side (every metric, the same
rows); when the challenger's package records the train step's model selection (`challenger_candidates` in gate.json:
`{"chosen", "candidates": {<family>: {"val_ndcg@10", "val_hr@10", "settings", "trials"}}}`), a second table lists
the candidates' validation scores with the chosen one marked.

`write_gate_report` writes gate.html plus each figure as SVG next to it, and logs the figures (SVG and PNG) and
gate.html to the version's MLflow run under `gate_report/`.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import re
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PROMOTED_COLOR, REJECTED_COLOR = "#1a7f37", "#cf222e"
CHALLENGER_COLOR, CHAMPION_COLOR, BASELINE_COLOR = "#0969da", "#8250df", "#9a6700"
# The exported model's per-epoch keys (ncf/train.py _Logger.log_epoch); stage-prefixed ones (gmf_, mlp_) are the
# pretraining stages, not the challenger.
_CURVE = re.compile(r"^(?P<pass>(?:refit_)?(?:m\d+_)?)(?P<name>loss|val_ndcg|val_hr)$")
MLFLOW_DIR = "gate_report"


def svg(figure: Figure, salt: str) -> str:
    """The figure as an inline <svg> element: text kept as text, no XML prolog, ids salted per figure."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
                       bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


# ---- figures ---------------------------------------------------------------------------------------------------

def _when(record) -> dt.datetime:
    """The version's run date (else the day it was registered), as midnight of that day."""
    try:
        day = dt.date.fromisoformat(record.run_date)
    except ValueError:
        day = dt.date.fromisoformat(record.registered_at[:10])
    return dt.datetime.combine(day, dt.time())


def gate_history(versions: list, current: str, metric: str) -> Figure:
    """The gate metric of every version by run date: challenger, champion at that time, popularity baseline (versions
    tagged `gate.baseline_score`); promotions marked.

    `versions`: ncf.status.VersionRecord list, oldest first; `current`: the version this report is about."""
    figure = Figure(figsize=(7.5, 3.4))
    ax = figure.add_subplot()
    scored = [v for v in versions if v.challenger_score is not None]
    dates = [_when(v) for v in scored]
    ax.plot(dates, [v.challenger_score for v in scored], "-o", color=CHALLENGER_COLOR, label="challenger", zorder=3)
    champions = [(d, v.champion_score) for d, v in zip(dates, scored, strict=True) if v.champion_score is not None]
    if champions:
        ax.plot(*zip(*champions, strict=True), "--s", color=CHAMPION_COLOR, label="champion at that time",
                markersize=5, zorder=2)
    baselines = [(d, v.baseline_score) for d, v in zip(dates, scored, strict=True) if v.baseline_score is not None]
    if baselines:
        ax.plot(*zip(*baselines, strict=True), ":^", color=BASELINE_COLOR, label="popularity baseline", markersize=5,
                zorder=1)
    promoted = [(d, v.challenger_score) for d, v in zip(dates, scored, strict=True) if v.promoted]
    if promoted:
        ax.scatter(*zip(*promoted, strict=True), s=220, marker="*", color=PROMOTED_COLOR, label="promoted", zorder=4)
    for d, v in zip(dates, scored, strict=True):
        weight = "bold" if v.version == current else "normal"
        ax.annotate(f"v{v.version}", (d, v.challenger_score), textcoords="offset points", xytext=(0, 9),
                    ha="center", fontsize=8, fontweight=weight, color=PROMOTED_COLOR if v.promoted else REJECTED_COLOR)
    ax.margins(y=0.18)  # room for the version labels above the points
    ax.set_ylabel(metric or "gate metric")
    ax.set_title("gate metric by run date (each run scored on its own partition)", fontsize=10)
    _date_axis(ax, dates)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure


def _date_axis(ax, dates: list[dt.datetime]) -> None:
    """Whole days on the x axis (matplotlib picks hours for a span of a few days), half a day of margin."""
    from matplotlib import dates as mdates

    if not dates:
        return
    span = (max(dates) - min(dates)).days
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, -(-span // 8))))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    margin = dt.timedelta(hours=12)
    ax.set_xlim(min(dates) - margin, max(dates) + margin)
    for label in ax.get_xticklabels():
        label.set(rotation=30, horizontalalignment="right", fontsize=8)


def training_curves(curves: dict[str, list[tuple[int, float]]], trials: list[float]) -> Figure:
    """Loss and validation metric per epoch (one line per training pass) and, when tuning ran, the trials."""
    panels = 3 if trials else 2
    figure = Figure(figsize=(4.0 * panels, 3.2))
    loss_ax, val_ax = figure.add_subplot(1, panels, 1), figure.add_subplot(1, panels, 2)
    for key, points in sorted(curves.items()):
        match = _CURVE.match(key)
        label = (match["pass"].rstrip("_").replace("_", " ") if match else key) or "selection"
        ax = loss_ax if key.endswith("loss") else val_ax
        name = "" if ax is loss_ax else " " + (match["name"][4:] if match else key)
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, "-o", markersize=3, label=f"{label}{name}")
    last_epoch = max((step for points in curves.values() for step, _ in points), default=1)
    for ax, title in ((loss_ax, "training loss per epoch"), (val_ax, "validation metric per epoch")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last_epoch + 0.5)  # whole epochs, even for a one-epoch run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#57606a")
    if trials:
        ax = figure.add_subplot(1, panels, 3)
        numbers = list(range(1, len(trials) + 1))
        ax.plot(numbers, trials, "o", markersize=4, label="trial")
        best = [max(trials[:i]) for i in numbers]
        ax.plot(numbers, best, "-", color=PROMOTED_COLOR, label="best so far")
        ax.set_title("tuning trials (validation)", fontsize=10)
        ax.set_xlabel("trial")
        ax.set_xlim(0.5, len(trials) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


# ---- data from MLflow ------------------------------------------------------------------------------------------

def training_history(tracking_uri: str, run_id: str) -> tuple[dict[str, list[tuple[int, float]]], list[float]]:
    """(curves, trials) of a training run: per-epoch series of the exported model (step >= 1; step 0 holds the
    final summary) and the child runs' trial values in start order."""
    from ncf import registry

    client = registry.client(tracking_uri)
    run = client.get_run(run_id)
    curves = {}
    for key in sorted(run.data.metrics):
        if _CURVE.match(key):
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step >= 1)
            if points:
                curves[key] = points
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=10_000)
    trials = []
    for child in children:
        metrics = child.data.metrics
        key = "value" if "value" in metrics else next((k for k in sorted(metrics) if k.startswith("val_")), None)
        if key is not None:
            trials.append(float(metrics[key]))
    return curves, trials


# ---- HTML ------------------------------------------------------------------------------------------------------

def _cell(values: dict[str, float] | None, key: str) -> str:
    if not values or key not in values:
        return "&ndash;"
    value = values[key]
    return str(value) if isinstance(value, int) else f"{value:.4f}"  # counts (full_eval_users) as they are


def _coverage(name: str, cov: dict[str, int] | None) -> str:
    return "" if not cov else (
        f"<li>{html.escape(name)}: {cov['native']} of {cov['rows']} rows ranked natively; "
        f"{cov['rows'] - cov['known_user']} unknown users (popularity fallback), "
        f"{cov['rows'] - cov['known_test_item']} unknown held-out items (misses)</li>")


def _setting(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def candidates_table(summary: dict[str, Any] | None) -> str:
    """The train step's model selection as an HTML table: one row per candidate family, its validation metrics
    (every numeric `val_*` key), trials and settings; the chosen one marked. "" when there is no summary."""
    candidates = (summary or {}).get("candidates") or {}
    if not candidates:
        return ""
    chosen = summary.get("chosen")
    metrics = sorted({k for c in candidates.values() for k, v in c.items()
                      if k.startswith("val_") and isinstance(v, int | float) and not isinstance(v, bool)})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    for name, values in candidates.items():
        mark = name == chosen
        settings = values.get("settings") or {}
        described = ", ".join(f"{k}={_setting(v)}" for k, v in sorted(settings.items())) if isinstance(
            settings, dict) else str(settings)
        cells = "".join(f"<td>{_cell(values, m)}</td>" for m in metrics)
        trials = values.get("trials")
        rows.append(f"<tr{' class=chosen' if mark else ''}><td>{html.escape(str(name))}"
                    f"{' <b>&#9733; chosen</b>' if mark else ''}</td>{cells}"
                    f"<td>{html.escape(str(trials)) if trials is not None else '&ndash;'}</td>"
                    f"<td class=settings>{html.escape(described) or '&ndash;'}</td></tr>")
    return (f"<h2>Model selection: candidates on validation</h2>\n<p>The train step compared these families on its "
            f"validation split and chose <b>{html.escape(str(chosen or '?'))}</b>.</p>\n"
            f"<table class=candidates><tr><th>candidate</th>{head}<th>trials</th><th>settings</th></tr>"
            + "".join(rows) + "</table>")


def render_html(report: dict[str, Any], figures: dict[str, str | None]) -> str:
    """gate.html: `report` is gate.json's content; `figures` maps a caption to an inline <svg> (None: a note why
    it is missing)."""
    verdict = "PROMOTED" if report["promoted"] else "REJECTED"
    color = PROMOTED_COLOR if report["promoted"] else REJECTED_COLOR
    columns = [("challenger", f"challenger v{report['version']}", report["challenger_metrics"])]
    champion = f"v{report['champion_version']}" if report.get("champion_version") else "none"
    columns.append(("champion", f"champion {champion}", report.get("champion_metrics")))
    if report.get("baseline_metrics"):
        columns.append(("baseline", f"baseline ({report.get('baseline', 'popularity')})", report["baseline_metrics"]))
    metrics = sorted(set().union(*(values or {} for _, _, values in columns)))
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    rows = "".join(f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{_cell(values, m)}</td>"
                                                           for _, _, values in columns) + "</tr>" for m in metrics)
    coverages = _coverage(f"challenger v{report['version']}", report.get("challenger_coverage")) + _coverage(
        f"champion {champion}", report.get("champion_coverage"))
    partitions = "; ".join(f"{role} {check['status']}: {check['detail']}"
                           for role, check in report.get("training_partitions", {}).items())
    sections = "".join(
        f"<figure><figcaption>{html.escape(caption)}</figcaption>"
        + (body if body is not None else "<p class=note>not available: no MLflow training run for this "
           "version in this store</p>") + "</figure>"
        for caption, body in figures.items())
    name = html.escape(report["model_name"])
    baseline_rule = baseline_line = ""
    if report.get("baseline_score") is not None:
        baseline_rule = f", min_baseline_gain {report.get('min_baseline_gain', 0.0)}"
        baseline_line = (f" Popularity baseline (the partition's training interaction counts, the same rows): "
                         f"{report['baseline_score']:.4f}.")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Gate: {name} v{report['version']}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;
text-align:right}}td:first-child,th:first-child,td.settings{{text-align:left}}tr.chosen{{background:#dafbe1}}figure{{margin:1.5em 0}}figcaption{{font-weight:bold;
margin-bottom:.5em}}figure svg{{max-width:100%;height:auto}}.note{{color:#57606a}}</style></head><body>
<h1 style="color:{color}">{verdict}: {name} v{report['version']}</h1>
<p>{html.escape(report['reason'])}</p>
<p>Gate metric <b>{html.escape(report['gate_metric'])}</b>, min_delta {report['min_delta']}, floor {report['floor']}{baseline_rule};
scored on {report['num_users']} test users of <code>{html.escape(report['partition_uri'])}</code>.
Champion before the gate: {champion}.{baseline_line}</p>
<ul>{coverages}</ul>
<p>Training partitions: {html.escape(partitions or "not checked")}</p>
<table class=scores><tr><th>metric</th>{head}</tr>{rows}</table>
{candidates_table(report.get("challenger_candidates"))}
{sections}
<p><small>{html.escape(report['decided_at'])}</small></p></body></html>
"""


def _existing_run(tracking_uri: str, run_id: str) -> bool:
    import mlflow

    from ncf import registry

    try:
        return bool(run_id) and registry.client(tracking_uri).get_run(run_id) is not None
    except mlflow.exceptions.MlflowException:
        return False


def write_gate_report(directory: Path, report: dict[str, Any], *, tracking_uri: str, run_id: str) -> None:
    """Write gate.html (figures inlined) and the figures as SVG into `directory`; log them to MLflow run `run_id`
    (the version's run). `report` is gate.json's content; the version must be registered already."""
    from ncf.status import version_history

    versions = version_history(tracking_uri, report["model_name"])
    version = str(report["version"])
    train_run = next((v.train_run_id for v in versions if v.version == version), "")
    drawn = {"gate_history": gate_history(versions, version, report["gate_metric"]),
             "training_curves": training_curves(*training_history(tracking_uri, train_run))
             if _existing_run(tracking_uri, train_run) else None}
    inline = {name: svg(fig, name) if fig is not None else None for name, fig in drawn.items()}
    (directory / "gate.html").write_text(render_html(report, {
        "Gate metric across versions": inline["gate_history"],
        f"Training curves of the challenger v{version}": inline["training_curves"]}))
    for name, text in inline.items():
        if text is not None:
            (directory / f"{name}.svg").write_text(text)
    _log_to_mlflow(directory, drawn, tracking_uri, run_id)


def _log_to_mlflow(directory: Path, figures: dict[str, Figure | None], tracking_uri: str, run_id: str) -> None:
    """The figures (SVG + PNG) and gate.html as artifacts of the version's run, under gate_report/. The decision
    is already made and recorded: a store that refuses the upload is reported on stderr, not a failed gate."""
    import tempfile

    from ncf import registry

    try:
        with tempfile.TemporaryDirectory(prefix="ncf-report-") as tmp:
            for name, figure in figures.items():
                if figure is not None:
                    (Path(tmp) / f"{name}.png").write_bytes(png(figure))
                    (Path(tmp) / f"{name}.svg").write_text((directory / f"{name}.svg").read_text())
            (Path(tmp) / "gate.html").write_text((directory / "gate.html").read_text())
            registry.client(tracking_uri).log_artifacts(run_id, tmp, MLFLOW_DIR)
    except Exception as exc:  # the artifact store's many error types
        print(f"warning: gate report figures not logged to MLflow run {run_id}: {exc}", file=sys.stderr)
