"""The stored report lists hosts and findings by address numerically (10.0.0.9 before
10.0.0.10), as the merge ranks them: one build_report serves both."""

from __future__ import annotations

import uuid
from typing import Any

from lewis_tasks.domain.findings import assess
from lewis_tasks.domain.scanjob import OpenPort
from lewis_tasks.domain.services import ServiceInfo
from lewis_tasks.infra.database import get_engine
from lewis_tasks.producer.scanreport import load_scan_report
from lewis_tasks.storage import scans
from lewis_tasks.storage.db import session_scope

HOSTS = ["10.0.0.10", "10.0.0.9"]  # the string order, which is not the address order


def test_the_report_orders_hosts_and_findings_numerically(lewis_settings: Any) -> None:
    # Given a recorded scan with an equally severe finding on each host
    scan_id = uuid.uuid4().hex
    ports = [OpenPort(a, ServiceInfo(8080, "http-alt", probe="banner")) for a in HOSTS]
    with session_scope(get_engine()) as session:
        scans.upsert_scan(
            session,
            scan_id,
            request={"hosts": [{"address": a, "hostname": None} for a in HOSTS]},
            chunks_total=2,
            ports_total=2,
            chunks=[{"chunk_index": i, "host": a, "ports": ["8080"]} for i, a in enumerate(HOSTS)],
        )
        for i, port in enumerate(ports):
            scans.record_chunk(
                session,
                scan_id,
                i,
                {"address": port.address, "closed": 0},
                ports_scanned=1,
                open_ports=[scans.port_row(port)],
            )
        scans.save_findings(session, scan_id, [assess(p.address, p.service) for p in ports])
    # When it is read back
    report = load_scan_report(scan_id)
    # Then 10.0.0.9 comes first, in the hosts and in the findings
    assert report is not None
    assert [h.address for h in report.hosts] == ["10.0.0.9", "10.0.0.10"]
    assert [f["host"] for f in report.findings] == ["10.0.0.9", "10.0.0.10"]
    assert report.open_ports() == {"10.0.0.9": [8080], "10.0.0.10": [8080]}
