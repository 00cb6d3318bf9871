"""Candidate CVEs of an identified product, cached as the guide's cached_vulnerability_lookup
meant: this process's LRU, then the Redis cache, then the database. A Redis outage only costs
lookups (the cache degrades to misses), never a scan.

The database is read through the :class:`CveSource` the task hands in (storage/vulns.py's
StoredCves): infra does not import storage.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..domain.vulns import CveRecord, cpe_products
from .cache import VULN_KEYS, cached, get_cache, key_part

VULN_CACHE_TTL = 3600


class CveSource(Protocol):
    """Where the CVEs are stored (storage/vulns.py's StoredCves)."""

    def records_for(self, vendor: str, product: str) -> list[CveRecord]:
        """The CVEs with a range on ``vendor``/``product``, all their ranges."""
        ...


@cached(
    ttl=VULN_CACHE_TTL,
    local=True,
    key=lambda cpe, source: get_cache().make_key("vulns:cpe", key_part(cpe)),
)
def _records_for_cpe(cpe: str, source: CveSource) -> list[dict[str, Any]]:
    vendor, _, product = cpe.partition(":")
    return [r.to_dict() for r in source.records_for(vendor, product)]


def cve_records(product: str | None, source: CveSource) -> list[CveRecord]:
    """Candidate CVEs of an identified product: this process's LRU, then the Redis cache, then
    ``source`` (the guide's cached_vulnerability_lookup). A Redis outage only costs lookups."""
    records: dict[str, CveRecord] = {}
    for cpe in cpe_products(product):
        for data in _records_for_cpe(cpe, source):
            record = CveRecord.from_dict(data)
            records.setdefault(record.cve_id, record)
    return list(records.values())


def invalidate_vulnerability_cache() -> int:
    """Drop cached CVE lookups (after an import); other processes' LRUs expire within seconds."""
    return get_cache().invalidate(VULN_KEYS)


__all__ = ["CveSource", "cve_records", "invalidate_vulnerability_cache", "VULN_CACHE_TTL"]
