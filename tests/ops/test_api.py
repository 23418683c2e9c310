"""The manager's admin HTTP API on a live cluster: authentication, queries, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from forehand.errors import ConfigError
from forehand.ops import ADMIN_TOKEN_ENV, load_admin_token

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, OpsCluster, eventually, run_async
else:
    from _ops_cluster import TOKEN, OpsCluster, eventually, run_async

PARTS = ["auth", "cart"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(ops_cluster: OpsCluster) -> Iterator[httpx.Client]:
    """A client of the admin API."""
    with httpx.Client(base_url=ops_cluster.api_url, timeout=10) as client:
        yield client


def test_mutations_need_the_admin_token(api: httpx.Client) -> None:
    """Without a token a mutation gets 401 with a Bearer challenge, with a wrong one 403, and
    neither changes anything; with the right token it is done."""
    before = api.get("/api/policy").json()
    change = {"overload_cooldown_ms": before["overload_cooldown_ms"] + 1}
    missing = api.put("/api/policy", json=change)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "unauthenticated"
    wrong = api.put("/api/policy", json=change, headers={"Authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    other_scheme = api.put("/api/policy", json=change, headers={"Authorization": f"Basic {TOKEN}"})
    assert other_scheme.status_code == 401
    for path in ("/api/servers/s1/drain", "/api/servers/s1/undrain"):
        assert api.post(path).status_code == 401
        assert api.post(path, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert api.get("/api/policy").json() == before
    assert all(s["state"] == "active" for s in api.get("/api/map").json()["servers"])
    done = api.put("/api/policy", json=change, headers=AUTH)
    assert done.status_code == 200 and done.json() == {**before, **change}
    assert api.get("/api/policy").json() == {**before, **change}
    original = {"overload_cooldown_ms": before["overload_cooldown_ms"]}
    restored = api.put("/api/policy", json=original, headers=AUTH)
    assert restored.json() == before


def test_bad_input_is_refused_and_changes_nothing(api: httpx.Client) -> None:
    """Unknown servers and sessions, malformed ids, bodies and settings get 4xx JSON errors and
    leave the policy and the map as they were."""
    policy = api.get("/api/policy").json()
    version = api.get("/api/status").json()["map_version"]
    cases = [
        api.post("/api/servers/nosuch/drain", headers=AUTH),
        api.post("/api/servers/s1/undrain", headers=AUTH),
        api.post("/api/sessions/zz/handoff", json={}, headers=AUTH),
        api.post("/api/sessions/" + "ab" * 16 + "/handoff", json={}, headers=AUTH),
        api.get("/api/sessions/" + "ab" * 15),
        api.put("/api/policy", content=b"{not json", headers=AUTH),
        api.put("/api/policy", json=[1, 2], headers=AUTH),
        api.put("/api/policy", json={"no_such_setting": 1}, headers=AUTH),
        api.put("/api/policy", json={"overload_parts_fraction": 5.0}, headers=AUTH),
        api.put("/api/policy", json={"overload_cooldown_ms": "soon"}, headers=AUTH),
        api.put("/api/policy", content=b"{" + b" " * 70_000 + b"}", headers=AUTH),
        api.get("/api/history", params={"limit": "-3"}),
        api.get("/api/no-such-endpoint"),
        api.delete("/api/policy", headers=AUTH),
        api.get("/api/sessions", params={"server": "nosuch"}),
        api.get("/api/history", params={"kind": "bogus"}),
        api.get("/api/history", params={"reason": "bogus"}),
        api.get("/api/history", params={"outcome": "bogus"}),
        api.post("/api/rebalance", json={"tolerance": "some"}, headers=AUTH),
        api.post("/api/rebalance", json={"tolerance": -1}, headers=AUTH),
        api.post("/api/rebalance", json={"parts_max": 0}, headers=AUTH),
        api.post("/api/rebalance", json={"parts_max": 1.5}, headers=AUTH),
        # A misspelt option is refused, not ignored for its default.
        api.post("/api/sessions/" + "ab" * 16 + "/handoff", json={"taget": "s2"}, headers=AUTH),
        api.post("/api/rebalance", json={"tolerence": 0.5}, headers=AUTH),
        api.post("/api/rebalance", json={"parts_max": 10**20}, headers=AUTH),
    ]
    statuses = [response.status_code for response in cases]
    assert statuses == [
        *(404, 409, 400, 404, 400, 400, 400, 400, 400, 400, 413, 400, 404, 405),
        *(404, 400, 400, 400),
        *(400, 400, 400, 400),
        *(400, 400, 400),
    ]
    assert "'taget'" in cases[-3].json()["detail"]
    assert cases[-2].json()["error"] == "unknown_key"
    for response in cases:
        body = response.json()
        assert set(body) == {"error", "detail"} and body["detail"]
    # Why it is refused, not "not DRAINING, or the commit queue is full".
    assert cases[1].json()["detail"] == "cannot undrain s1: it is active, not draining"
    assert api.get("/api/policy").json() == policy
    assert api.get("/api/status").json()["map_version"] == version


def test_a_rebalance_within_the_tolerance_moves_nothing(api: httpx.Client) -> None:
    """At the largest tolerance no server is off its share of primaries or of replica roles:
    202, nothing queued either way (the answer says both), the map as it was."""
    version = api.get("/api/status").json()["map_version"]
    answer = api.post("/api/rebalance", json={"tolerance": 10.0}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"queued": 0, "replica_roles_queued": False}
    assert api.get("/api/status").json()["map_version"] == version


def test_queries_agree_with_the_client(ops_cluster: OpsCluster, api: httpx.Client) -> None:
    """A session the client opened is listed with the placement the client sees; the map and
    the servers are reported with their parts; the dashboard and its modules are served; the
    manager's log (--log-format json) is one JSON object per line, core events' fields as keys."""

    async def open_session() -> tuple[str, dict[str, str]]:
        async with ops_cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("auth", "login", "erin")
            return session.id.hex(), {p: session.placements()[p].primary for p in PARTS}

    session_hex, primaries = run_async(open_session())
    placement = api.get(f"/api/sessions/{session_hex}").json()
    assert {p["part"]: p["primary"] for p in placement["parts"]} == primaries
    assert all(len(p["replicas"]) == 2 for p in placement["parts"])
    listed = api.get("/api/sessions", params={"limit": 1000}).json()
    assert session_hex in {s["session_id"] for s in listed}
    shard_map = api.get("/api/map").json()
    assert shard_map["parts"] >= len(PARTS)
    assert {s["server_id"] for s in shard_map["servers"]} == set(ops_cluster.server_ids)

    def counted() -> bool:
        servers = api.get("/api/servers").json()
        return sum(s["primary_parts"] for s in servers) == shard_map["parts"] and all(
            s["history"] for s in servers
        )

    run_async(eventually(counted, what="parts per server in the sampled view"))
    logged = [json.loads(line) for line in ops_cluster.log("manager").splitlines() if line]
    joined = [line for line in logged if line.get("core_event") == "ServerJoined"]
    assert {line["server_id"] for line in joined} == set(ops_cluster.server_ids)
    assert all({"timestamp", "level", "logger", "event"} <= set(line) for line in logged)
    page = api.get("/")
    assert page.status_code == 200 and 'type="module"' in page.text
    for module in ("app.js", "sparkline.js", "timeline.js", "style.css"):
        assert api.get(f"/static/{module}").status_code == 200


@pytest.mark.parametrize("problem", ["port in use", "no token file"])
def test_a_bad_admin_http_setup_stops_the_manager_with_a_clear_error(
    ops_cluster: OpsCluster, tmp_path: Path, problem: str
) -> None:
    """A manager whose API port is taken or whose token file is missing exits with status 2
    and one line naming the problem."""
    port = ops_cluster.api_url.rsplit(":", 1)[1]
    settings = {
        "port in use": [f"admin_http_port={port}"],
        "no token file": ["admin_http_port=0", f'admin_token_file="{tmp_path / "missing"}"'],
    }[problem]
    command = [
        sys.executable,
        "-c",
        "from forehand.cli import main; main()",
        "manager",
        "--certs-dir",
        str(ops_cluster.certs_dir),
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
    ]
    for setting in settings:
        command += ["--set", setting]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    expected = {
        "port in use": "cannot listen for HTTP",
        "no token file": "cannot read admin_token_file",
    }[problem]
    assert expected in result.stderr


def test_the_admin_token_is_read_from_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token is the file's first line, else $FOREHAND_ADMIN_TOKEN, else None; a token under
    16 characters is a ConfigError."""
    path = tmp_path / "token"
    path.write_text("f" * 20 + "\nignored\n", encoding="utf-8")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "e" * 20)
    assert load_admin_token(path) == "f" * 20
    assert load_admin_token(None) == "e" * 20
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    assert load_admin_token(None) is None
    path.write_text("abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"admin_token_file {path} must be at least 16.*got 3"):
        load_admin_token(path)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match=f"\\${ADMIN_TOKEN_ENV} must be at least 16"):
        load_admin_token(None)
