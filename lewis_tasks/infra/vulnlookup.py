"""Candidate CVEs of an identified product, cached as the guide's cached_vulnerability_lookup
meant: this process's LRU, then the Redis cache, then the database. A Redis outage only costs
lookups (the cache degrades to misses), never a scan.
"""

from __future__ import annotations

from typing import Any

from ..domain.vulns import CveRecord, cpe_products
from .cache import VULN_KEYS, cached, get_cache, key_part

VULN_CACHE_TTL = 3600


@cached(
    ttl=VULN_CACHE_TTL, local=True, key=lambda cpe: get_cache().make_key("vulns:cpe", key_part(cpe))
)
def _records_for_cpe(cpe: str) -> list[dict[str, Any]]:
    from ..storage import vulns
    from ..storage.db import session_scope
    from .database import get_engine

    vendor, _, product = cpe.partition(":")
    with session_scope(get_engine()) as session:
        return [r.to_dict() for r in vulns.cve_records_for(session, vendor, product)]


def cve_records(product: str | None) -> list[CveRecord]:
    """Candidate CVEs of an identified product: this process's LRU, then the Redis cache, then
    the database (the guide's cached_vulnerability_lookup). A Redis outage only costs lookups."""
    records: dict[str, CveRecord] = {}
    for cpe in cpe_products(product):
        for data in _records_for_cpe(cpe):
            record = CveRecord.from_dict(data)
            records.setdefault(record.cve_id, record)
    return list(records.values())


def invalidate_vulnerability_cache() -> int:
    """Drop cached CVE lookups (after an import); other processes' LRUs expire within seconds."""
    return get_cache().invalidate(VULN_KEYS)


__all__ = ["cve_records", "invalidate_vulnerability_cache", "VULN_CACHE_TTL"]
