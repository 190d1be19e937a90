"""The UI starts on a busy machine: Gradio's launch-time check of its own page is replaced by a patient one."""
import httpx

from ui import app as ui_app


class FakeHead:
    """httpx.head that times out `slow` times, then answers `status`."""

    def __init__(self, slow: int, status: int = 200):
        self.slow, self.status, self.calls = slow, status, 0

    def __call__(self, url, **kwargs):
        self.calls += 1
        if self.calls <= self.slow:
            raise httpx.TimeoutException("slow")
        return httpx.Response(self.status)


def test_a_slow_first_answer_is_waited_for(monkeypatch):
    head = FakeHead(slow=3)
    monkeypatch.setattr(ui_app.httpx, "head", head)
    monkeypatch.setattr(ui_app.time, "sleep", lambda s: None)
    assert ui_app.patient_url_ok("http://127.0.0.1:1/")
    assert head.calls == 4


def test_a_page_that_never_answers_is_reported(monkeypatch):
    head = FakeHead(slow=100)
    monkeypatch.setattr(ui_app.httpx, "head", head)
    monkeypatch.setattr(ui_app.time, "sleep", lambda s: None)
    assert not ui_app.patient_url_ok("http://127.0.0.1:1/", attempts=4)
    assert head.calls == 4


def test_a_login_page_counts_as_up(monkeypatch):
    monkeypatch.setattr(ui_app.httpx, "head", FakeHead(slow=0, status=401))
    assert ui_app.patient_url_ok("http://127.0.0.1:1/")


def test_launch_uses_the_patient_check(monkeypatch, tmp_path):
    import gradio.networking

    seen = {}

    def fake_launch(self, **kwargs):
        seen["url_ok"] = gradio.networking.url_ok

    monkeypatch.setattr(ui_app.gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(gradio.networking, "url_ok", gradio.networking.url_ok)  # restored after the test
    app = ui_app.launch_app(tmp_path / "jobs", block=False)
    app.kiln_scheduler.stop()
    assert seen["url_ok"] is ui_app.patient_url_ok
