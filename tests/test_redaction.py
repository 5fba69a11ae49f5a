"""Credentials in camera URLs, in every form cameras use, never leave the process: not in a log line (cannot
open, stream lost, reconnecting), an error, a traceback, a metric or /healthz."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamd.redact import redact
from tests.conftest import ROOT, free_port
from tests.test_operations import http_get, start_streamd, stop_streamd, write_config

# name -> (URL with {hostport} and {path}, the secrets in it). Every secret is a string found nowhere else.
FORMS = {
    "userinfo": ("rtsp://admin:Uq1@Wz:Rb@{hostport}/{path}", ["Uq1", "Wz:Rb"]),  # "@" and ":" in the password
    "user_password": ("rtsp://{hostport}/{path}?user=admin&password=Qp2x", ["Qp2x"]),
    "username_pwd": ("rtsp://{hostport}/{path}?username=admin&pwd=Qp3:x&channel=1", ["Qp3"]),
    "usr_passwd": ("rtsp://{hostport}/{path}?usr=admin&passwd=Qp4&x&subtype=0", ["Qp4"]),  # raw "&" in it
    "token": ("rtsp://{hostport}/{path}?token=Tk5abc", ["Tk5abc"]),
    "auth": ("rtsp://{hostport}/{path}?channel=2&auth=Au6abc", ["Au6abc"]),
    "key": ("rtsp://{hostport}/{path}?key=Ky7abc&stream=1", ["Ky7abc"]),
    "secret": ("rtsp://{hostport}/{path}?secret=Sc8abc", ["Sc8abc"]),
    "path_tokens": ("rtsp://{hostport}/user=admin_password=Pt9_x_channel=1_stream=0.sdp", ["Pt9"]),
    "slash": ("rtsp://admin:Sl13%2Fq@{hostport}/{path}", ["Sl13"]),
    "percent": ("rtsp://adm%69n:Pc10%40%3Aq@{hostport}/{path}?src=rtsp%3A%2F%2Fadmin%3APc11%40cam%2Fs%3Fpassword%3DPc12",
                ["Pc10", "Pc11", "Pc12"]),
}
SECRETS = [secret for _, secrets in FORMS.values() for secret in secrets]


@pytest.mark.parametrize("text,expected", [
    ("cannot open rtsp://admin:p@ss:w0rd@10.0.0.1:554/s: refused", "cannot open rtsp://***@10.0.0.1:554/s: refused"),
    ("rtsp://a:b@h1/x, rtsp://h2/y, mail admin@example.com", "rtsp://***@h1/x, rtsp://h2/y, mail admin@example.com"),
    ("rtsp://10.0.0.1/live?user=admin&password=hunter2: Connection refused",
     "rtsp://10.0.0.1/live?user=***&password=***: Connection refused"),
    ("rtsp://h/s?username=u&pwd=a:b&passwd=c&token=d&auth=e&key=f&secret=g&channel=1",
     "rtsp://h/s?username=***&pwd=***&passwd=***&token=***&auth=***&key=***&secret=***&channel=1"),
    ("rtsp://h/s?usr=u&Password=a&b&subtype=0", "rtsp://h/s?usr=***&Password=***&subtype=0"),
    ("rtsp://h:554/user=admin_password=tl_Jw6_channel=1_stream=0.sdp?real_stream",
     "rtsp://h:554/user=***_password=***_channel=1_stream=0.sdp?real_stream"),
    ("rtsp://h/x?access_token=a&x-auth-token=b&apikey=c&sig=d", "rtsp://h/x?access_token=***&x-auth-token=***&apikey=***&sig=***"),
    ("rtsp://admin:p%40ss@h/", "rtsp://***@h/"),
    ("rtsp://admin:pa%2Fss@h/x and rtsp://admin:pa%2fss@h/y", "rtsp://***@h/x and rtsp://***@h/y"),  # "/" in it
    ("http://nvr/p?src=rtsp%3A%2F%2Fcam%2Fs%3Fpassword%3Dhun%40ter end",  # an "@" in a nested query's password
     "http://nvr/p?src=rtsp%3A%2F%2Fcam%2Fs%3Fpassword%3D*** end"),
    ("http://nvr/p?src=rtsp%3A%2F%2Fcam%2Fs%3Ftoken%3DaB%40cD%26ch%3D1 end",
     "http://nvr/p?src=rtsp%3A%2F%2Fcam%2Fs%3Ftoken%3D***%26ch%3D1 end"),
    ("http://nvr/p?src=rtsp%3A%2F%2Fadmin%3Ahunter2%40cam%2Fs%3Fpassword%3Dhunter3%26x%3D1 end",
     "http://nvr/p?src=rtsp%3A%2F%2F***@cam%2Fs%3Fpassword%3D***%26x%3D1 end"),
    ("OSError: [Errno 5] Input/output error: 'rtsp://h/s?token=abc'", "OSError: [Errno 5] Input/output error: 'rtsp://h/s?token=***'"),
    ("camera gate: running, channel=2, monkey=1", "camera gate: running, channel=2, monkey=1"),  # nothing to hide
])
def test_redact_every_url_form(text, expected):
    assert redact(text) == expected


def test_a_traceback_logged_by_the_daemon_is_redacted():
    """A real PyAV error carries the URL as written in its message: the log handler the command line
    installs redacts the whole record, traceback included."""
    url = "rtsp://admin:Tb1secret@127.0.0.1:1/s?password=Tb2secret"
    script = ("import logging, av\nfrom streamd.cli import setup_logging\nsetup_logging(False)\n"
              f"try:\n    av.open({url!r}, timeout=2)\nexcept Exception:\n"
              "    logging.getLogger('streamd.source').exception('camera gate: unexpected error')\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Traceback" in out.stderr and "rtsp://***@127.0.0.1:1/s?password=***" in out.stderr, out.stderr
    assert "Tb1secret" not in out.stderr and "Tb2secret" not in out.stderr


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_no_credential_form_leaks_from_failing_cameras(rtsp_server, publishers, tmp_path):
    """Each form twice: a camera whose host refuses (the "cannot open" lines, again at every retry) and a
    camera whose stream is lost (its publisher dies: "stream lost"). Log, /metrics and /healthz are read."""
    publishers(rtsp_server.publish_url("live"), mode="colour", seconds=120)
    publishers(rtsp_server.publish_url("user=admin_password=Pt9_x_channel=1_stream=0.sdp"), mode="colour",
               seconds=120)
    refused, http = f"127.0.0.1:{free_port()}", free_port()
    live = f"127.0.0.1:{rtsp_server.client_port}"
    cameras = ""
    for form, (url, _) in FORMS.items():
        cameras += (f'[[camera]]\nname = "gone_{form}"\nurl = "{url.format(hostport=refused, path="gone")}"\n'
                    f'collect = false\n')
        cameras += (f'[[camera]]\nname = "lost_{form}"\nurl = "{url.format(hostport=live, path="live")}"\n'
                    f'transport = "udp"\nread_timeout_s = 1.0\ncollect = false\n')
    cfg = tmp_path / "c.toml"
    write_config(cfg, "", http, cameras)
    proc = start_streamd("-v", "run", "-c", str(cfg), "--report-every", "2")
    log = lambda: Path(proc.log_path).read_text()  # noqa: E731
    try:
        assert wait_for(lambda: all(f"camera lost_{form}: running" in log() for form in FORMS), 60), log()
        for p in publishers.started:
            p.stop()
        assert wait_for(lambda: all(f"camera lost_{form}: stream lost" in log() for form in FORMS), 30), log()
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
        _, health = http_get(f"http://127.0.0.1:{http}/healthz")
    finally:
        text = stop_streamd(proc)
    for form in FORMS:
        for line in (f"camera gone_{form}: cannot open ", f"camera lost_{form}: stream lost"):
            said = [row for row in text.splitlines() if line in row]
            assert said and all("***" in row for row in said), (line, said)
    assert "lost_userinfo" in metrics and "gone_percent" in health
    for secret in SECRETS:
        for where, content in (("log", text), ("metrics", metrics), ("healthz", health)):
            assert secret not in content, f"{secret} in the {where}"
