"""Issue 12 item 4: wrong-password floods against basic auth over TLS, on a real `serve`.

bcrypt (cost 10 here, ~50 ms) is the one thing an unauthenticated client can make expensive.
Before the fix each guess held a thread (1,616 threads and 176 MB at 100 guesses/s), and with a
cold cache (at start, or after any reload) a 40/s flood delayed Prometheus's first good scrape
by 20 s. The floods here come from other loopback addresses (127.0.0.2 and up) or from
Prometheus's own, at a bounded rate for a bounded time; "Prometheus" scrapes with the right
password on a new TLS connection each time. Figures are printed (pytest -s) and recorded in
docs/security.md.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.support.attack import (
    FloodProcess,
    LimitedExporter,
    Sampler,
    Scraper,
    basic,
    cpu_seconds,
    request,
)
from tests.support.database import SeededDb
from tests.support.hardening import Pki, make_pki, wait_until

PASSWORD = "scrape-password-1"
OTHER_PASSWORD = "rotated-password-2"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
OTHER_HASH = bcrypt.hashpw(OTHER_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
ATTACKERS = tuple(f"127.0.0.{i}" for i in range(2, 10))
RATE = 50  # wrong passwords a second: well past what one core can bcrypt (~10-20/s)
SECONDS = 12


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(folder: Path, pki: Pki, hashed: str = HASH) -> Path:
    shutil.copy(pki.server.cert, folder / "server.crt")
    shutil.copy(pki.server.key, folder / "server.key")
    path = folder / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                    f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


class ColdExporter(LimitedExporter):
    """Started without a single good scrape: ready once an anonymous request gets its 401 (no
    bcrypt is needed for that), so the credential cache is still cold."""

    def __enter__(self) -> ColdExporter:
        import subprocess

        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, preexec_fn=self._limit)
        wait_until(self._refuses_anonymous, 30, "the exporter to answer 401")
        return self

    def _refuses_anonymous(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.output()
        try:
            return request(self.port, tls=self.tls, timeout=2)[0] == 401
        except OSError:
            return False


@pytest.fixture
def cold_exporter(seeded_db: SeededDb, pki: Pki, tmp_path: Path) -> Iterator[ColdExporter]:
    with ColdExporter(seeded_db.url, nofile=1024, tls=pki.client_context(),
                      authorization=basic("prometheus", PASSWORD), poll_interval=0.5,
                      extra_args=["--web.config.file", str(web_config(tmp_path, pki))]) as exp:
        yield exp
    assert "Traceback" not in exp.output()


def first_success(exp: LimitedExporter, timeout: float = 30) -> tuple[float, int]:
    """Seconds until a good scrape succeeds, retrying like Prometheus would (10 s timeout),
    and how many attempts it took."""
    started = time.monotonic()
    attempts = 0
    while time.monotonic() - started < timeout:
        attempts += 1
        try:
            if exp.scrape(timeout=10)[0] == 200:
                return time.monotonic() - started, attempts
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("no good scrape succeeded")


def bcrypt_seconds() -> float:
    """One bcrypt at cost 10 on this machine now (it is shared: figures scale with it)."""
    started = time.monotonic()
    for i in range(3):
        bcrypt.checkpw(f"x{i}".encode(), HASH.encode())
    return (time.monotonic() - started) / 3


# The machine is shared (its load is often 4-5 times its 2 cores): latency bounds are what a
# scraper needs, not the figures measured (docs/security.md). Prometheus's default scrape
# timeout is 10 s; a typical scrape must not wait for the flood at all.
PROMETHEUS_TIMEOUT = 10.0
TYPICAL = 1.0


def test_flood_from_other_hosts_cold_then_warm(cold_exporter: ColdExporter, pki: Pki) -> None:
    exp = cold_exporter
    one = bcrypt_seconds()
    sampler = Sampler(exp.pid)
    sampler.start()
    cpu_before = cpu_seconds(exp.pid)
    flood = FloodProcess(exp.port, RATE, SECONDS, ATTACKERS, ca_file=pki.ca.cert,
                         workers=100).start()
    time.sleep(2)  # the gate is saturated before Prometheus's first scrape
    cold, attempts = first_success(exp)
    scraper = Scraper(lambda: exp.scrape(timeout=10), every=0.5)
    scraper.start()
    flood.join()
    cpu = cpu_seconds(exp.pid) - cpu_before
    warm = scraper.stop()
    peak = sampler.stop()
    attackers = sorted(flood.latencies)
    print(f"\nflood {RATE}/s from {len(ATTACKERS)} addresses for {SECONDS} s (achieved "
          f"{flood.achieved():.0f}/s, answers {flood.statuses}, attacker p50 "
          f"{attackers[len(attackers) // 2] * 1000:.0f} ms): Prometheus cold first success "
          f"{cold * 1000:.0f} ms, warm {warm.summary()}; exporter peak threads {peak.threads}, "
          f"fds {peak.fds}, RSS {peak.rss_mb:.0f} MB, CPU {cpu:.1f} s in "
          f"{SECONDS + 2:.0f} s; one bcrypt {one * 1000:.0f} ms in the test process)")
    # A newcomer gets the next bcrypt turn (exporter.web.gate): Prometheus's very first
    # attempt succeeds (before: two 10 s timeouts first, at 40/s).
    assert attempts == 1 and cold < PROMETHEUS_TIMEOUT, (cold, attempts)
    assert not warm.failures, warm.failures[:5]
    assert warm.figures()["p50"] < TYPICAL, warm.summary()
    assert peak.threads <= 8  # loop, bcrypt, scheduler, pool: never one per guess
    assert peak.rss_mb < 150
    # Never let in; refused at once (shed) or after its bcrypt. A guess queued behind others may
    # outlast the attacker's own 5 s patience on a loaded machine: it is dropped, not held.
    assert set(flood.statuses) <= {"401", "429", "503", "TimeoutError"}, flood.statuses
    assert flood.statuses.get("429", 0) + flood.statuses.get("503", 0) > flood.achieved()
    assert cpu < (SECONDS + 3) * 1.5  # bcrypt on one thread: about one core, not two


def test_a_flood_from_prometheus_own_address_and_a_reload(cold_exporter: ColdExporter,
                                                         pki: Pki, tmp_path: Path) -> None:
    """The same address as Prometheus (a NAT, a proxy): only its cached success can tell it
    apart. The cache must survive a reload (certificate rotation rewrites the web config),
    and a changed hash must not keep the old password working."""
    exp = cold_exporter
    first_success(exp)  # warm: Prometheus got in once, before the flood
    flood = FloodProcess(exp.port, RATE, SECONDS, ("127.0.0.1",), ca_file=pki.ca.cert,
                         workers=100).start()
    time.sleep(2)
    scraper = Scraper(lambda: exp.scrape(timeout=10), every=0.3)
    scraper.start()
    time.sleep(3)
    config = tmp_path / "web.yml"
    config.write_text(config.read_text() + "\n")  # a reload: same users, a new BasicAuth
    os.utime(config)
    wait_until(lambda: "web config reloaded" in exp.output(), 5, "the reload")
    time.sleep(4)
    reloaded = exp.output().count("web config reloaded")
    scrapes = scraper.stop()
    flood.stop()
    print(f"\nflood {RATE}/s from Prometheus's own address, web config reloaded "
          f"{reloaded}x meanwhile: answers {flood.statuses}; Prometheus (warm) "
          f"{scrapes.summary()}")
    assert not scrapes.failures, scrapes.failures[:5]
    assert scrapes.figures()["p50"] < TYPICAL, scrapes.summary()
    # The hash changes: the carried-over success must not let the old password in.
    config.write_text(config.read_text().replace(HASH, OTHER_HASH))
    os.utime(config)
    wait_until(lambda: exp.scrape(timeout=10)[0] == 401, 10, "the old password refused")
    exp.authorization = basic("prometheus", OTHER_PASSWORD)
    assert first_success(exp)[0] < PROMETHEUS_TIMEOUT


def test_half_finished_tls_handshakes_under_the_open_file_limit(cold_exporter: ColdExporter
                                                                ) -> None:
    """2,000 connections from 8 other hosts that send 3 bytes of a ClientHello and stop (NOFILE
    1024): before, 4 of 8 scrapes failed and the process burnt a core; handshakes are now
    non-blocking steps of the loop, cut at the request deadline or closed to make room, and a
    handshake that progresses is not the one closed (a TLS scrape needs round trips)."""
    from tests.support.attack import Slowloris, raise_own_nofile, sockets_held

    exp = cold_exporter
    raise_own_nofile(4500)
    first_success(exp)
    sampler = Sampler(exp.pid)
    sampler.start()
    attack = Slowloris(exp.port, 2000, mode="tls", reopen_per_second=2000, sources=ATTACKERS)
    attack.start()
    assert attack.ready.wait(20)
    scraper = Scraper(lambda: exp.scrape(timeout=5), every=0.5)
    scraper.start()
    time.sleep(12)
    scrapes = scraper.stop()
    held = sockets_held(exp.pid)
    attack.stop()
    peak = sampler.stop()
    print(f"\nhalf TLS handshakes x 2000 (NOFILE 1024), {attack.opened - 2000} reopened: "
          f"scrapes {scrapes.summary()}; held {held} sockets, peak fds {peak.fds}, threads "
          f"{peak.threads}, RSS {peak.rss_mb:.0f} MB")
    assert not scrapes.failures, scrapes.failures[:5]
    assert scrapes.figures()["p50"] < TYPICAL, scrapes.summary()
    assert peak.fds < 1024 and peak.threads <= 8 and peak.rss_mb < 150
