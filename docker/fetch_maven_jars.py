"""Download jars from Maven Central into a folder, each checked against the .sha1 Maven Central publishes.

Used by docker/pipeline.Dockerfile (build time only): `python fetch_maven_jars.py DEST group:artifact:version...`.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.request
from pathlib import Path

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


def jar_url(coordinate: str) -> str:
    group, artifact, version = coordinate.split(":")
    return f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"


def fetch(coordinate: str, dest: Path) -> Path:
    url = jar_url(coordinate)
    with urllib.request.urlopen(url) as response:
        data = response.read()
    with urllib.request.urlopen(url + ".sha1") as response:
        expected = response.read().decode().split()[0]
    actual = hashlib.sha1(data).hexdigest()
    if actual != expected:
        raise SystemExit(f"error: {url}: sha1 {actual} does not match the published {expected}")
    target = dest / url.rsplit("/", 1)[1]
    target.write_bytes(data)
    return target


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: fetch_maven_jars.py DEST group:artifact:version...", file=sys.stderr)
        return 2
    dest = Path(argv[0])
    dest.mkdir(parents=True, exist_ok=True)
    for coordinate in argv[1:]:
        print(f"fetched {fetch(coordinate, dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
