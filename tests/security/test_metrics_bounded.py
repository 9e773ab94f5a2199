"""Issue 13, item 1: /metrics stays bounded, carries no request text, can need a key; /docs is offline-safe.

Before the fix each distinct URL path became a Prometheus series (`endpoint` label taken from the path),
so random paths grew /metrics without bound and put raw path text (e-mails, phone numbers) in it.
"""

from __future__ import annotations

import random
import re
import string

import httpx
import pytest

from serving_support import running_server

from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import build_service


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.fixture(scope="module")
def svc(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    keys = KeyStore(root / "keys.db")
    _, key = keys.create("scraper", "predict")
    app, _ = build_service([trained_run], names=["m"], settings=ServeSettings(metrics_auth=True, docs=True),
                           keys_db=root / "keys.db", audit_db=root / "audit.db")
    with running_server(app) as url:
        yield {"url": url, "key": key}


def test_random_paths_add_no_series_and_no_path_text(svc):
    url, auth = svc["url"], {"Authorization": f"Bearer {svc['key']}"}
    rng = random.Random(0)
    with httpx.Client(timeout=30) as c:
        for method in ("GET", "POST", "PUT"):  # one request of each kind, so their series exist before we count
            for path in ("/no/such/path", "/v1/models/nosuchmodel/predict", "/v1/x", "/v1/models/x/y"):
                c.request(method, url + path)
        c.get(f"{url}/metrics", headers=auth)  # the scrape's own series too
        before = c.get(f"{url}/metrics", headers=auth).text
        secrets_in_paths = []
        for i in range(1500):
            secret = f"li.wei{i}@example.com/13812345{i % 1000:03d}"
            secrets_in_paths.append(secret)
            noise = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 300)))
            method = rng.choice(["GET", "POST", "PUT"])
            path = rng.choice([f"/{noise}/{secret}", f"/v1/models/{noise}{i}/predict", f"/v1/{noise}",
                               f"/v1/models/{noise}/{secret}"])
            assert c.request(method, url + path).status_code in (401, 404, 405)
        after = c.get(f"{url}/metrics", headers=auth).text
    assert _series(after) == _series(before), sorted(_series(after) - _series(before))[:5]
    assert len(after.encode()) < 200_000
    assert "example.com" not in after and "13812345" not in after
    endpoints = set(re.findall(r'endpoint="([^"]*)"', after))
    assert endpoints <= {"_unmatched", "predict", "explain", "list_models", "model_info", "reload", "healthz",
                         "readyz", "metrics", "openapi", "docs"}, endpoints
    assert set(re.findall(r'model="([^"]*)"', after)) <= {"m", "_unknown", "_service"}


def test_metrics_can_require_a_key(svc):
    assert httpx.get(f"{svc['url']}/metrics").status_code == 401
    r = httpx.get(f"{svc['url']}/metrics", headers={"Authorization": f"Bearer {svc['key']}"})
    assert r.status_code == 200 and "domaintune_requests_total" in r.text


def test_docs_are_served_from_the_package_not_a_cdn(svc, trained_run, tmp_path):
    page = httpx.get(f"{svc['url']}/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/static/") for a in assets), assets
    for a in assets:
        assert httpx.get(svc["url"] + a).status_code == 200, a
    # without --docs there is no /docs page at all (FastAPI's default loads from a CDN)
    app, _ = build_service([trained_run], names=["m"], settings=ServeSettings(auth=False),
                           audit_db=tmp_path / "audit.db")
    with running_server(app) as url:
        assert httpx.get(f"{url}/docs").status_code == 404
        assert httpx.get(f"{url}/openapi.json").status_code == 200
