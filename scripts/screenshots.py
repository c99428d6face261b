"""The README's screenshots: the latest gate report and `ncfctl status`, rendered by headless Chromium.

    python scripts/screenshots.py                          # runs/demo (made by `make demo`; made here if missing)
    python scripts/screenshots.py --storage-root runs/x --run-date 2026-03-01 --run-date 2026-03-02 ...

Writes docs/gate-report.png and docs/ncfctl-status.png. When the storage root has no MLflow store yet, it runs
`ncfctl run` there first (on a free port, with the given run dates); when no predictor serves the store, it deploys
the champion locally (free port) for the status picture. It stops what it started.
Chromium comes from Debian (`apt-get install -y chromium`) when it is not on PATH. Chromium runs with networking
off: the report must render from the file alone.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ncf.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get"):
        sys.exit("error: chromium is not installed and apt-get is not available; install Chromium and rerun")
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


def screenshot(page: Path, output: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ncf-chromium-") as profile:
        subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={output}", page.resolve().as_uri()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    print(f"wrote {output}")


def ensure_store(root: Path, run_dates: list[str]) -> None:
    """Run the demo pipeline into `root` unless it has a store."""
    if (root / "mlflow.db").exists():
        return
    dates = [flag for date in run_dates for flag in ("--run-date", date)]
    subprocess.run([sys.executable, "-m", "ncfctl", "run", "--storage-root", str(root),
                    "--port", str(free_port(count=2)), *dates], check=True, cwd=REPO)


def ensure_serving(root: Path) -> int | None:
    """The pid of a local predictor started here for `root`'s champion, or None when one already serves it."""
    from ncf import registry
    from ncf.status import local_serving
    from serving.deploy import DeployConfig, run, state_path

    tracking_uri = registry.default_tracking_uri(root)
    if local_serving(tracking_uri, "ncf")["state"] == "serving":
        return None
    config = DeployConfig(tracking_uri=tracking_uri, port=free_port(count=2))
    run(config)
    return json.loads(state_path(config, tracking_uri).read_text())["pid"]


def status_page(root: Path, directory: Path) -> tuple[Path, int, int]:
    """An HTML page showing `ncfctl status` as a terminal would, and the window size that fits it."""
    text = subprocess.run([sys.executable, "-m", "ncfctl", "status", "--storage-root", str(root)], check=True,
                          capture_output=True, text=True, cwd=REPO).stdout
    text = text.replace(str(REPO) + "/", "")  # shorter paths, as a user in the repo sees them
    page = directory / "status.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><style>body{margin:0;background:#0d1117}"
        "pre{color:#e6edf3;font:13px/1.45 'DejaVu Sans Mono',monospace;padding:18px 22px;margin:0}"
        "b{color:#7ee787}</style></head><body><pre><b>$ ncfctl status</b>\n" + html.escape(text) + "</pre></body></html>")
    lines = text.splitlines() + [""]
    return page, 60 + int(7.9 * max(map(len, lines))), 50 + 19 * len(lines)  # 13px monospace: ~7.9 x 19 px


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage-root", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--run-date", action="append", default=[],
                        help="run dates for the pipeline run made when the root has no store (default: ncfctl run's)")
    parser.add_argument("--output-dir", default=str(REPO / "docs"))
    args = parser.parse_args()
    root, output = Path(args.storage_root).resolve(), Path(args.output_dir)
    sys.path.insert(0, str(REPO))
    ensure_store(root, args.run_date)
    pid = ensure_serving(root)
    try:
        reports = sorted((root / "reports" / "gate").glob("*-v*/gate.html"),
                         key=lambda p: int(p.parent.name.rsplit("-v", 1)[1]))
        if not reports:
            sys.exit(f"error: {root}/reports/gate holds no gate report; run `make demo` first")
        screenshot(reports[-1], output / "gate-report.png", 1000, 1250)
        with tempfile.TemporaryDirectory(prefix="ncf-status-") as tmp:
            page, width, height = status_page(root, Path(tmp))
            screenshot(page, output / "ncfctl-status.png", width, height)
    finally:
        if pid is not None:
            from serving.deploy import stop_local_server

            stop_local_server(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
