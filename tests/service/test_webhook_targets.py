"""Where a webhook may go (SSRF protection), and how an attempt reaches it: only public
addresses unless allowed, IPv4 inside IPv6 judged as IPv4, the connection pinned to the
checked address with the URL's Host, no redirects followed, and the timeout enforced."""
from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from shared.webhooks import sender
from shared.webhooks.targets import RefusedURL, Target, is_allowed, is_public, parse_networks, parse_url, resolve
from tests.service import faults
from tests.service.webhook_receiver import Receiver, Reply

NOT_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::a00:1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_are_refused(address):
    assert not is_public(ipaddress.ip_address(address))
    assert not is_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_admit_listed_private_addresses_only():
    allow = parse_networks("127.0.0.0/8, fd00::/8")
    assert is_allowed(ipaddress.ip_address("127.0.0.1"), allow)
    assert is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), allow)  # mapped: judged as the IPv4 address
    assert is_allowed(ipaddress.ip_address("fd12::1"), allow)
    assert not is_allowed(ipaddress.ip_address("10.0.0.1"), allow)
    assert not is_allowed(ipaddress.ip_address("::1"), allow)
    with pytest.raises(ValueError, match="ATELIER_WEBHOOK_ALLOW_NETWORKS"):
        parse_networks("127.0.0.0/8,not-a-network")


@pytest.mark.parametrize("url", [
    "", "example.com/hook", "ftp://example.com/", "file:///etc/passwd", "gopher://127.0.0.1/", "javascript:alert(1)",
    "http://", "http:///path", "http://user:pw@example.com/", "http://example.com:99999/", "http://exa mple.com/",
    "http://example.com/#frag", "http://example.com/\n", "https://" + "a" * 2100 + ".com/",
])
def test_malformed_urls_are_refused(url):
    with pytest.raises(RefusedURL):
        parse_url(url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8080/hook", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://0x7f000001/", "http://2130706433/", "http://0177.0.0.1/", "http://10.0.0.1/", "http://169.254.169.254/latest",
    "https://[fe80::1]/", "http://0.0.0.0:8000/", "http://no-such-host.invalid/",
])
def test_urls_leading_to_non_public_or_no_addresses_are_refused(url):
    with pytest.raises(RefusedURL):
        resolve(url)


def test_a_checked_target_keeps_host_port_and_path():
    target = resolve("http://127.0.0.1:8080/a/b?c=1", parse_networks("127.0.0.0/8"))
    assert (target.scheme, target.host, target.port, target.request_target) == ("http", "127.0.0.1", 8080, "/a/b?c=1")
    assert target.addresses == (ipaddress.ip_address("127.0.0.1"),)
    assert target.host_header == "127.0.0.1:8080"
    assert resolve("http://[::ffff:127.0.0.1]/", parse_networks("127.0.0.0/8")).host_header == "[::ffff:127.0.0.1]"


def test_the_connection_goes_to_the_checked_address_whatever_the_host_name(receiver):
    """DNS rebinding: the name is never resolved again; the checked address is used, the name
    only in the Host header (and, over TLS, as the server name the certificate must match)."""
    target = Target("http", "rebinding.example", receiver.port, "/hook?x=1", (ipaddress.ip_address("127.0.0.1"),))
    outcome = sender.post(target, {"webhook-id": "msg_1"}, b"{}", timeout=10)
    assert outcome.delivered and outcome.status_code == 200 and outcome.excerpt == "ok"
    [request] = receiver.received
    assert request.path == "/hook?x=1"
    assert request.headers["host"] == f"rebinding.example:{receiver.port}"
    assert request.headers["content-type"] == "application/json"


def test_redirects_are_not_followed_and_count_as_failures(receiver):
    receiver.reply(Reply(302, {"Location": receiver.url("/elsewhere")}))
    outcome = sender.post(resolve(receiver.url(), parse_networks("127.0.0.0/8")), {}, b"{}", timeout=10)
    assert outcome.status_code == 302 and not outcome.delivered
    assert [r.path for r in receiver.received] == ["/hook"]


def test_a_slow_receiver_times_out(receiver):
    receiver.reply(Reply(200, delay=3))
    outcome = sender.post(resolve(receiver.url(), parse_networks("127.0.0.0/8")), {}, b"{}", timeout=0.5)
    assert outcome.status_code is None and not outcome.delivered
    assert "timed out" in outcome.error.lower()


def test_a_closed_port_is_a_connection_error(receiver):
    faults.stop_receiver(receiver)
    outcome = sender.post(resolve(receiver.url(), parse_networks("127.0.0.0/8")), {}, b"{}", timeout=5)
    assert outcome.status_code is None and "NewConnectionError" in outcome.error


def test_retry_after_is_read_as_seconds_or_a_date(receiver):
    receiver.reply(Reply(503, {"Retry-After": "7"}), Reply(429, {"Retry-After": format_datetime(
        datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)}), Reply(500, {"Retry-After": "7"}))
    target = resolve(receiver.url(), parse_networks("127.0.0.0/8"))
    assert sender.post(target, {}, b"{}", timeout=5).retry_after == 7
    assert 100 < sender.post(target, {}, b"{}", timeout=5).retry_after <= 120
    assert sender.post(target, {}, b"{}", timeout=5).retry_after is None  # only on 429 and 503


def test_a_retry_after_that_is_not_ascii_digits_is_ignored(receiver):
    """The bytes 0xB2 and 0xB9 read as '²' and '¹': digits to str.isdigit(), but not to float()."""
    receiver.reply(Reply(503, {"Retry-After": "\xb2"}), Reply(429, {"Retry-After": "\xb9"}))
    target = resolve(receiver.url(), parse_networks("127.0.0.0/8"))
    outcomes = [sender.post(target, {}, b"{}", timeout=5) for _ in range(2)]
    assert [(o.status_code, o.retry_after) for o in outcomes] == [(503, None), (429, None)]


def test_the_retry_schedule_setting_is_validated():
    from shared.config import Settings
    assert sender.retry_schedule(Settings()) == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sender.retry_schedule(Settings(webhook_retry_schedule="1, 2.5")) == (1, 2.5)
    with pytest.raises(ValueError, match="ATELIER_WEBHOOK_RETRY_SCHEDULE"):
        sender.retry_schedule(Settings(webhook_retry_schedule="5,soon"))


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch):
    """An HTTPS receiver whose certificate names `hooks.example`, trusted like a public CA's."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.example",
                    "-addext", "subjectAltName=DNS:hooks.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default trust store of the client side
    receiver = Receiver(context)
    yield receiver
    receiver.stop()


def test_tls_goes_to_the_checked_address_and_checks_the_certificate_for_the_url_host(tls_receiver):
    address = (ipaddress.ip_address("127.0.0.1"),)
    right = Target("https", "hooks.example", tls_receiver.port, "/hook", address)
    outcome = sender.post(right, {}, b"{}", timeout=10)
    assert outcome.delivered, outcome.error
    assert tls_receiver.received[0].headers["host"] == f"hooks.example:{tls_receiver.port}"
    wrong = Target("https", "other.example", tls_receiver.port, "/hook", address)
    outcome = sender.post(wrong, {}, b"{}", timeout=10)
    assert outcome.status_code is None and "doesn't match 'hooks.example'" in outcome.error
    assert len(tls_receiver.received) == 1
