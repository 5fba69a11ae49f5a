"""Credentials in camera URLs, in every form cameras use, never leave the process: not in a log line (cannot
open, stream lost, reconnecting), an error, a traceback, a metric or /healthz."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import re
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd import config as cfgmod
from streamd.redact import MIN_REMEMBERED, redact
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
    "short_keys": ("rtsp://{hostport}/{path}?u=admin&p=Sk14x", ["Sk14x"]),
    "pw_pass": ("rtsp://{hostport}/{path}?user=admin&pw=Sk15x&x=1", ["Sk15x"]),
    "slash": ("rtsp://admin:Sl13%2Fq@{hostport}/{path}", ["Sl13"]),
    "percent": ("rtsp://adm%69n:Pc10%40%3Aq@{hostport}/{path}?src=rtsp%3A%2F%2Fadmin%3APc11%40cam%2Fs%3Fpassword%3DPc12",
                ["Pc10", "Pc11", "Pc12"]),
}
# Forms with a space, which no RTSP server of the test takes: for cameras whose host refuses only
SPACED = {
    "userinfo_space": ("rtsp://admin:Sp16 Sq17@{hostport}/{path}", ["Sp16", "Sq17"]),
    "query_space": ("rtsp://{hostport}/{path}?u=admin&p=Sp18: Sq19&channel=1", ["Sp18", "Sq19"]),
}
SECRETS = [secret for _, secrets in (*FORMS.values(), *SPACED.values()) for secret in secrets]


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
    ("cannot open rtsp://admin:pa ss@10.0.0.1/s: refused", "cannot open rtsp://***@10.0.0.1/s: refused"),
    ("'rtsp://admin:a b @c@h:554/s'", "'rtsp://***@h:554/s'"),
    ("rtsp://h/s?u=admin&p=secret", "rtsp://h/s?u=***&p=***"),
    ("rtsp://h/s?pw=a&pass=b&user=c&passwd=d&key=e&auth=f&token=g&username=h&password=i&pwd=j",
     "rtsp://h/s?pw=***&pass=***&user=***&passwd=***&key=***&auth=***&token=***&username=***&password=***&pwd=***"),
    ("gate: 25.0 fps out, up=1, step=2, latency p50 3 ms p99 9 ms", "gate: 25.0 fps out, up=1, step=2, latency p50 3 ms p99 9 ms"),
])
def test_redact_every_url_form(text, expected):
    assert redact(text) == expected


# Passwords as users pick them: spaces, "@", ":", "/", "%", other URL delimiters and letters of any script
PASSWORDS = st.text(st.one_of(st.sampled_from(" @:/%&=?#_-.+!$"), st.characters(categories=["L", "N"])),
                    min_size=MIN_REMEMBERED, max_size=24)
KEYS = st.sampled_from(["p", "pw", "pass", "password", "passwd", "pwd", "key", "auth", "token", "secret",
                        "u", "user", "username"])


def encode(password: str, delimiters: str) -> str:
    """The password as written into a URL: the characters that would end its part there percent-encoded."""
    return "".join(quote(ch, safe="") if ch in delimiters else ch for ch in password)


def urls(password: str, key: str) -> list[tuple[str, str]]:
    """(URL, the password as written in it): in the user information (which ends at "/", "?" or "#") and as a
    query value (which ends at "&" or "#", and "%" is encoded)."""
    userinfo, value = encode(password, "/?#"), encode(password, "&#%")
    return [(f"rtsp://admin:{userinfo}@cam.example:554/Streaming/101", userinfo),
            (f"rtsp://cam.example:554/live.sdp?channel=1&u=admin&{key}={value}", value),
            (f"rtsp://cam.example:554/live.sdp?{key}={value}&channel=1", value)]


def in_running_text(url: str) -> list[str]:
    """The URL as log lines, errors and tracebacks carry it."""
    return [url, f"camera gate: cannot open {url}: Connection refused", f"OSError: [Errno 5] I/O error: '{url}'",
            f"camera gate: stream lost: End of file ({url})"]


@settings(max_examples=300, deadline=None)
@given(PASSWORDS.filter(lambda p: len(p.strip()) >= MIN_REMEMBERED), KEYS)
def test_no_password_of_a_configured_url_survives_redaction(password, key):
    """Whatever the password holds, once the config naming the URL is read, neither the password nor its
    written form appear in what redact returns, of the URL alone or inside a log line."""
    for url, written in urls(password, key):
        cfgmod.parse({"camera": [{"name": "gate", "url": url}], "zmq": {"endpoint": ""}})
        for text in in_running_text(url):
            redacted = redact(text)
            assert password not in redacted and written not in redacted, (text, redacted)


@settings(max_examples=300, deadline=None)
@given(PASSWORDS.filter(lambda p: not re.search(r"[\s'\"<>]", p)), KEYS)
def test_the_patterns_alone_remove_a_password_without_spaces(password, key):
    """A URL the config does not hold (a library's message about another one): the patterns alone do it."""
    for url, written in urls(password, key):
        for text in in_running_text(url):
            redacted = redact(text)
            assert password not in redacted and written not in redacted, (text, redacted)


def test_a_traceback_logged_by_the_daemon_is_redacted():
    """A real PyAV error carries the URL as written in its message: the log handler the command line
    installs redacts the whole record, traceback included."""
    url = "rtsp://admin:Tb1secret@127.0.0.1:1/s?password=Tb2secret"
    script = ("import logging, av\nfrom streamd.cli import setup_logging\nsetup_logging(False)\n"
              f"try:\n    av.open({url!r}, timeout=2)\nexcept Exception:\n"
              "    logging.getLogger('streamd.daemon.source').exception('camera gate: unexpected error')\n")
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
    camera whose stream is lost (its publisher dies: "stream lost"); passwords with spaces on refusing hosts.
    Log, /metrics, /healthz and /api/cameras (the status page's cards: source in the hover title, errors)
    are read."""
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
    for form, (url, _) in SPACED.items():
        cameras += (f'[[camera]]\nname = "gone_{form}"\nurl = "{url.format(hostport=refused, path="gone")}"\n'
                    f'collect = false\n')
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
        _, cameras_api = http_get(f"http://127.0.0.1:{http}/api/cameras")  # the status page's cards and titles
    finally:
        text = stop_streamd(proc)
    for form in SPACED:
        said = [row for row in text.splitlines() if f"camera gone_{form}: cannot open " in row]
        assert said and all("***" in row for row in said), (form, said)
    assert "gone_query_space" in cameras_api and "Connection refused" in cameras_api  # its errors are there
    for form in FORMS:
        for line in (f"camera gone_{form}: cannot open ", f"camera lost_{form}: stream lost"):
            said = [row for row in text.splitlines() if line in row]
            assert said and all("***" in row for row in said), (line, said)
    assert "lost_userinfo" in metrics and "gone_percent" in health
    for secret in SECRETS:
        for where, content in (("log", text), ("metrics", metrics), ("healthz", health), ("api", cameras_api)):
            assert secret not in content, f"{secret} in the {where}"
