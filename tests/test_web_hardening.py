"""The served app against a hostile page or client (issue 25): parallel password guessing and DNS rebinding
(a request under another site's name, on every route the app serves)."""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_ui import free_port, served  # noqa: F401  (served: the running app)

FOREIGN = "rebind.example"
PARALLEL_LOGINS = 40


@pytest.fixture(scope="module")
def plain_app(tmp_path_factory):
    """The default app (loopback, no login); yields it (a launched gr.Blocks)."""
    from ui import launch_app

    app = launch_app(tmp_path_factory.mktemp("workspace") / "jobs", port=free_port(), block=False)
    try:
        yield app
    finally:
        app.kiln_scheduler.stop()
        app.close()


def served_routes(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of a FastAPI/Starlette app, included routers and mounts flattened;
    path parameters filled with a harmless value."""
    from starlette.routing import Mount, WebSocketRoute

    found = []
    for route in routes:
        if hasattr(route, "original_router"):  # a router included with a prefix (FastAPI's _IncludedRouter)
            found += served_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            found.append(("GET", prefix + route.path + "/x"))
        elif isinstance(route, WebSocketRoute):
            continue  # checked separately below
        else:
            path = re.sub(r"\{[^}]+\}", "x", prefix + route.path)
            found += [(method, path) for method in sorted(route.methods or {"GET"}) if method != "HEAD"]
    return found


def test_every_route_refuses_a_request_under_another_sites_name(plain_app):
    import httpx

    routes = served_routes(plain_app.server_app.routes)
    paths = {path for _, path in routes}
    # the enumeration reaches the parts a rebinding page would use
    assert {"/", "/config", "/gradio_api/upload", "/gradio_api/queue/join", "/gradio_api/info"} <= paths, paths
    assert any(path.startswith("/gradio_api/file") for path in paths), paths
    assert len(routes) > 40
    with httpx.Client(base_url=plain_app.local_url, timeout=30) as http:
        for method, path in routes:
            answer = http.request(method, path, headers={"Host": f"{FOREIGN}:7860"})
            assert answer.status_code == 421, (method, path, answer.status_code, answer.text[:200])
            assert "--allowed-host" in answer.text
        # the same routes under the app's own names are not refused by the check
        for host in ("127.0.0.1", "localhost"):
            for path in ("/", "/config", "/gradio_api/info"):
                assert http.get(path, headers={"Host": f"{host}:7860"}).status_code == 200, (host, path)


def test_an_api_call_from_a_rebinding_page_is_refused_and_runs_nothing(plain_app):
    import httpx

    with httpx.Client(base_url=plain_app.local_url, timeout=30) as http:
        for headers in ({"Host": FOREIGN, "Origin": f"http://{FOREIGN}"},  # DNS rebinding
                        {"Origin": f"http://{FOREIGN}"},  # right Host, another site's page
                        {"Host": FOREIGN}):
            refused = http.post("/gradio_api/call/job_list", json={"data": []}, headers=headers)
            assert refused.status_code == 421, (headers, refused.text)
            assert "event_id" not in refused.text
        own = http.post("/gradio_api/call/job_list", json={"data": []},
                        headers={"Origin": plain_app.local_url.rstrip("/")})
        assert own.status_code == 200 and "event_id" in own.json(), own.text


def test_websockets_under_another_sites_name_are_closed():
    import asyncio

    from ui.host_check import AllowedHosts, HostCheck

    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    check = HostCheck(inner, AllowedHosts("127.0.0.1"))
    scope = {"type": "websocket", "headers": [(b"host", FOREIGN.encode())]}
    asyncio.run(check(scope, None, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    asyncio.run(check({**scope, "headers": [(b"host", b"[::1]:7860")]}, None, send))
    assert reached == ["websocket"]


@pytest.mark.parametrize("bound, extra, good, bad", [
    ("127.0.0.1", [], ["127.0.0.1:7860", "localhost", "[::1]:80", "LOCALHOST."], [FOREIGN, "127.0.0.2", "", None]),
    ("::1", ["kiln.lan"], ["[::1]", "localhost:1", "kiln.lan:7860", "KILN.LAN"], [FOREIGN, "lan", "kiln.lan.evil"]),
    ("192.168.5.7", ["studio"], ["192.168.5.7:7860", "studio"], ["localhost", "127.0.0.1", FOREIGN]),
])
def test_allowed_hosts_are_the_bound_address_and_the_listed_names(bound, extra, good, bad):
    from ui.host_check import AllowedHosts

    allowed = AllowedHosts(bound, extra)
    assert all(allowed.allows(host) for host in good), [h for h in good if not allowed.allows(h)]
    assert not any(allowed.allows(host) for host in bad), [h for h in bad if allowed.allows(h)]
    assert not allowed.allows_origin("null") and not allowed.allows_origin(f"https://{FOREIGN}")


def test_allowed_host_option_is_repeatable_and_checked():
    from app import parse_args

    assert parse_args(["--allowed-host", "kiln.lan", "--allowed-host", "10.0.0.2"]).allowed_host == \
        ["kiln.lan", "10.0.0.2"]
    with pytest.raises(SystemExit):
        parse_args(["--allowed-host", "http://evil/"])


def test_parallel_wrong_logins_from_one_address_are_all_counted_before_the_password_check(tmp_path):
    import httpx

    from ui import launch_app
    from ui.login_limit import FAILED_LOGINS_PER_WINDOW

    checked = []
    lock = threading.Lock()

    def password_check(user: str, password: str) -> bool:  # the auth function Gradio calls
        with lock:
            checked.append(password)
        return password == "secret"

    app = launch_app(tmp_path / "jobs", port=free_port(), auth=password_check, block=False)
    try:
        barrier = threading.Barrier(PARALLEL_LOGINS)

        def guess(i: int) -> int:
            with httpx.Client(base_url=app.local_url, timeout=60) as http:
                barrier.wait()
                return http.post("/login", data={"username": "me", "password": f"guess{i}"}).status_code

        with ThreadPoolExecutor(PARALLEL_LOGINS) as pool:
            answers = list(pool.map(guess, range(PARALLEL_LOGINS)))
        assert len(checked) == FAILED_LOGINS_PER_WINDOW, (len(checked), answers)
        assert sorted(answers) == [400] * FAILED_LOGINS_PER_WINDOW + [429] * (PARALLEL_LOGINS - FAILED_LOGINS_PER_WINDOW)
    finally:
        app.kiln_scheduler.stop()
        app.close()


def test_a_successful_login_gives_its_reserved_attempt_back():
    import asyncio

    from ui.login_limit import LoginRateLimit

    async def answer(status):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return app

    async def ignore(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/login", "client": ("10.0.0.9", 1)}
    limit = LoginRateLimit(app=None, max_failures=2)
    for status in (200, 200, 200, 400):
        limit.app = asyncio.run(answer(status))
        asyncio.run(limit(scope, None, ignore))
    assert limit.wait_s("10.0.0.9") == 0  # three good logins and one bad: one failure counted
    asyncio.run(limit(scope, None, ignore))  # a second bad one
    assert limit.wait_s("10.0.0.9") > 0


# --- paths read from job files ------------------------------------------------------------------------------------
def test_paths_in_a_damaged_status_that_lead_outside_the_job_are_never_shown_or_served(served, tmp_path):
    from PIL import Image

    from trainer.jobs import JobManager
    from trainer.jobs.status import patch_status

    client, root = served
    secret = tmp_path / "secret.png"  # under /tmp, where Gradio would serve a file from
    Image.new("RGB", (8, 8), (200, 10, 10)).save(secret)
    other_folder = tmp_path / "pictures"
    other_folder.mkdir()
    Image.new("RGB", (8, 8)).save(other_folder / "private.png")
    manager = JobManager(root / "jobs")
    job_id = manager.create('method = "lora"\n', "damaged paths")
    manager.stop(job_id)
    job_dir = root / "jobs" / job_id
    own = job_dir / "samples" / "own.png"
    Image.new("RGB", (8, 8), (0, 0, 200)).save(own)
    (job_dir / "samples" / "link.png").symlink_to(secret)  # a link planted among the samples
    (job_dir / "output" / "link.safetensors").symlink_to(secret)
    patch_status(job_dir, state="running", phase="generating class images", total=4, done=1, pid=None,
                 heartbeat_at=1.0)  # never alive: settled at the next look, keeping the fields below
    patch_status(job_dir, state="stopped", latest_sample=str(secret), outputs=[str(secret), "/etc/hostname"],
                 class_dir=str(other_folder))
    job = manager.get(job_id)
    assert job["latest_sample"] is None and job["outputs"] == [] and job["class_dir"] is None
    result = client.predict(job_id, api_name="/job_view")
    gallery = result[4] or []
    shown = [Path(item["image"]).read_bytes() for item in gallery]  # what the browser would get
    assert shown == [own.read_bytes()], len(shown)  # the job's own sample only
    assert not result[6]  # no outputs: the planted link leads outside
    assert "private.png" not in result[1]


def test_a_linked_job_folder_is_shown_as_damaged_and_nothing_is_read_through_it(served):
    from trainer.jobs import JobManager

    client, root = served
    manager = JobManager(root / "jobs")
    target = manager.create('method = "lora"\n', "link target")
    manager.stop(target)
    (root / "jobs" / target / "log.txt").write_text("the target's log\n")
    (root / "jobs" / "zz-linked").symlink_to(root / "jobs" / target)
    try:
        result = client.predict("zz-linked", api_name="/job_view")
        assert "is a link" in result[1] and result[5] == ""  # no log read through the link
        assert "is a link" in client.predict("zz-linked", api_name="/job_stop")
        assert read_state(root / "jobs" / target) == "stopped"
    finally:
        (root / "jobs" / "zz-linked").unlink()


def read_state(job_dir: Path) -> str:
    from trainer.jobs import read_status

    return read_status(job_dir)["state"]
