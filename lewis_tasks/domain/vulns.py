"""Known vulnerabilities: NVD CVE JSON 2.0 feeds, CVSS scores, CPE version-range matching.

A feed file is ``{"vulnerabilities": [{"cve": {...}}, ...]}`` (the NVD API 2.0 / JSON 2.0
layout). From each record we keep the CVE id, its English description, one CVSS metric — v4.0,
else v3.1, else v3.0, else v2, as NVD presents them; NVD's own ("Primary") before a CNA's —
whose base score is *computed from the vector* with the ``cvss`` package (the feed's number is
kept beside it), and every CPE match of its configurations: vendor, product, version/update,
the four range bounds and the ``vulnerable`` flag. A match inside an AND configuration carries
the platforms it needs: such a CVE applies only where the platform holds too, which a banner
does not show (the OS, how it was packaged), so :func:`platform_condition` names the
platforms and findings report it as conditional instead of guessing either way.

CPE versions: ``*`` is any version (then the range bounds decide); ``-`` is "not applicable" —
NVD's word for a product whose upstream version does not decide (``CVE-2022-0543``: Redis as
Debian/Ubuntu packaged it, ``redis:-``), so it matches no banner version.

Versions compare piecewise ("8.9p1" → 8, 9, p, 1), as products number their releases: numbers
as numbers, missing numbers as 0 ("7.0" = "7.0.0"); a letter suffix is a later release
("1.3.5" < "1.3.5a" < "1.3.5b", "1.1.1" < "1.1.1w", "8.9" < "8.9p1"); the words dev, snapshot,
alpha, beta, pre, preview and rc mark pre-releases, in that order ("2.4.49-rc1" < "2.4.49").
An unknown version matches nothing: a finding never claims a CVE it cannot tell applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

from ..errors import InvalidInput

SEVERITIES = ("none", "low", "medium", "high", "critical")
_METRIC_KEYS = (
    ("cvssMetricV40", "4.0"),
    ("cvssMetricV31", "3.1"),
    ("cvssMetricV30", "3.0"),
    ("cvssMetricV2", "2.0"),
)
# Pre-release words, earliest first; any other word ("a", "p", "w") is a later release.
_PRE_RELEASE: Mapping[str, int] = {
    "dev": 0,
    "snapshot": 0,
    "alpha": 1,
    "beta": 2,
    "pre": 3,
    "preview": 3,
    "rc": 3,
}
_TOKEN = re.compile(r"\d+|[a-z]+")
_CPE_SPLIT = re.compile(r"(?<!\\):")
_ANY = ("*", "")

# Product names the signature table reports → the CPE vendor:product NVD files them under.
PRODUCT_CPES: Mapping[str, tuple[str, ...]] = {
    "openssh": ("openbsd:openssh",),
    "dropbear sshd": ("dropbear_ssh_project:dropbear_ssh",),
    "apache httpd": ("apache:http_server",),
    "nginx": ("f5:nginx", "nginx:nginx"),
    "lighttpd": ("lighttpd:lighttpd",),
    "microsoft iis httpd": ("microsoft:internet_information_services",),
    "redis": ("redis:redis",),
    "memcached": ("memcached:memcached",),
    "vsftpd": ("vsftpd_project:vsftpd", "beasts:vsftpd"),
    "proftpd": ("proftpd:proftpd",),
    "pure-ftpd": ("pureftpd:pure-ftpd",),
    "exim": ("exim:exim",),
    "postfix smtpd": ("postfix:postfix",),
    "sendmail": ("sendmail:sendmail",),
    "dovecot imapd": ("dovecot:dovecot",),
    "dovecot pop3d": ("dovecot:dovecot",),
    "mysql": ("oracle:mysql", "mysql:mysql"),
    "mariadb": ("mariadb:mariadb",),
    "postgresql": ("postgresql:postgresql",),
}


@dataclass(frozen=True)
class Cvss:
    """One CVSS metric: version, vector, the score computed from it, its severity band."""

    version: str
    vector: str
    base_score: float
    severity: str
    feed_score: float | None = None  # what the feed says, kept to spot disagreements

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "vector": self.vector,
            "base_score": self.base_score,
            "severity": self.severity,
            "feed_score": self.feed_score,
        }


@dataclass(frozen=True)
class CpeRange:
    """One ``cpeMatch`` entry: which versions of vendor:product a CVE applies to."""

    cve_id: str
    vendor: str
    product: str
    version: str = "*"  # an exact version, "*" (see the bounds) or "-" (not versioned)
    update: str = "*"
    start_including: str | None = None
    start_excluding: str | None = None
    end_including: str | None = None
    end_excluding: str | None = None
    vulnerable: bool = True
    platforms: tuple[str, ...] = ()  # CPEs an AND configuration also requires

    @property
    def key(self) -> str:
        return f"{self.vendor}:{self.product}"

    def matches(self, version: str) -> bool:
        """True if ``version`` of this vendor:product is inside the range."""
        if not self.vulnerable or self.version == "-":
            return False  # "-": no upstream version decides, so no banner version matches
        if self.version not in _ANY:
            return _exact_match(version, self.version, self.update)
        if self.start_including and compare_versions(version, self.start_including) < 0:
            return False
        if self.start_excluding and compare_versions(version, self.start_excluding) <= 0:
            return False
        if self.end_including and compare_versions(version, self.end_including) > 0:
            return False
        return not (self.end_excluding and compare_versions(version, self.end_excluding) >= 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "cve_id": self.cve_id,
            "vendor": self.vendor,
            "product": self.product,
            "version": self.version,
            "update": self.update,
            "start_including": self.start_including,
            "start_excluding": self.start_excluding,
            "end_including": self.end_including,
            "end_excluding": self.end_excluding,
            "vulnerable": self.vulnerable,
            "platforms": list(self.platforms),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CpeRange:
        return cls(**{**data, "platforms": tuple(data.get("platforms") or ())})


@dataclass(frozen=True)
class CveRecord:
    """What LEWIS keeps of one CVE."""

    cve_id: str
    description: str
    cvss: Cvss | None
    ranges: tuple[CpeRange, ...]
    published: str | None = None
    last_modified: str | None = None

    @property
    def severity(self) -> str:
        return self.cvss.severity if self.cvss else "none"

    @property
    def score(self) -> float:
        return self.cvss.base_score if self.cvss else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "cve_id": self.cve_id,
            "description": self.description,
            "cvss": self.cvss.to_dict() if self.cvss else None,
            "ranges": [r.to_dict() for r in self.ranges],
            "published": self.published,
            "last_modified": self.last_modified,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CveRecord:
        cvss = data.get("cvss")
        return cls(
            data["cve_id"],
            data.get("description", ""),
            Cvss(**cvss) if cvss else None,
            tuple(CpeRange.from_dict(r) for r in data.get("ranges") or ()),
            data.get("published"),
            data.get("last_modified"),
        )


# ---------------------------------------------------------------- versions


def version_tokens(version: str) -> list[int | str]:
    """ "8.9p1" → [8, 9, "p", 1]: the pieces compared by :func:`compare_versions`."""
    return [int(t) if t.isdigit() else t for t in _TOKEN.findall(version.lower())]


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is before, equal to or after ``b``."""
    ta, tb = version_tokens(a), version_tokens(b)
    for i in range(max(len(ta), len(tb))):
        if i >= len(ta):
            order = -_compare_missing(tb[i])
        elif i >= len(tb):
            order = _compare_missing(ta[i])
        else:
            order = _compare_tokens(ta[i], tb[i])
        if order:
            return order
    return 0


def _compare_tokens(x: int | str, y: int | str) -> int:
    """One piece of a version against the other's piece in the same place."""
    if isinstance(x, int) and isinstance(y, int):
        return (x > y) - (x < y)
    if isinstance(x, str) and isinstance(y, str):
        return _compare_words(x, y)
    # A word where the other has a number: a pre-release or a letter release ("1.0a") sorts
    # before the numbered one ("1.0.1").
    return -1 if isinstance(x, str) else 1


def _compare_missing(token: int | str) -> int:
    """How a version with ``token`` compares to one that stops just before it."""
    if isinstance(token, int):
        return 1 if token > 0 else 0  # "7.0.0" = "7.0", "7.0.1" > "7.0"
    return -1 if token in _PRE_RELEASE else 1  # "2.4.49rc1" < "2.4.49" < "2.4.49a"


def _compare_words(x: str, y: str) -> int:
    rx, ry = _PRE_RELEASE.get(x), _PRE_RELEASE.get(y)
    if rx is None and ry is None:
        return (x > y) - (x < y)  # letter releases: "1.3.5a" < "1.3.5b"
    if rx is None or ry is None:
        return -1 if ry is None else 1  # a pre-release before any letter release
    return (rx > ry) - (rx < ry)


def _exact_match(version: str, exact: str, update: str) -> bool:
    if update not in _ANY and update != "-":
        return compare_versions(version, exact + update) == 0
    if compare_versions(version, exact) == 0:
        return True
    if update == "-":
        return False
    base = re.match(r"\d+(?:\.\d+)*", version)  # update "*": 8.9p1 is a release of 8.9
    if base is None or base.group(0) == version:
        return False
    return compare_versions(base.group(0), exact) == 0


# ---------------------------------------------------------------- CVSS


def score_vector(vector: str, version: str | None = None) -> tuple[float, str]:
    """(base score, severity band) computed from a CVSS v2, v3.x or v4.0 vector."""
    try:
        if vector.startswith("CVSS:4") or (version or "").startswith("4"):
            v4 = CVSS4(vector)
            return float(v4.base_score), str(v4.severity).lower()
        if vector.startswith("CVSS:3") or (version or "").startswith("3"):
            metric: CVSS2 | CVSS3 = CVSS3(vector)
        else:
            metric = CVSS2(vector)
        score = float(metric.base_score)
        return score, str(metric.severities()[0]).lower()
    except (CVSSError, ValueError, KeyError) as exc:
        raise InvalidInput(f"CVSS vector {vector!r}: {exc}") from None


def _pick_cvss(metrics: Mapping[str, Any]) -> Cvss | None:
    for key, version in _METRIC_KEYS:
        entries = metrics.get(key) or []
        if not entries:
            continue
        entry = next((e for e in entries if e.get("type") == "Primary"), entries[0])
        data = entry.get("cvssData") or {}
        vector = data.get("vectorString")
        if not vector:
            continue
        declared = str(data.get("version", version))  # the metric's own word over its list's
        score, severity = score_vector(vector, declared)
        feed = data.get("baseScore")
        return Cvss(declared, vector, score, severity, None if feed is None else float(feed))
    return None


# ---------------------------------------------------------------- feeds


def parse_feed(feed: Mapping[str, Any] | str | bytes, *, source: str = "feed") -> list[CveRecord]:
    """The CVE records of one NVD JSON 2.0 feed (a parsed mapping, or its JSON text)."""
    if isinstance(feed, (str, bytes)):
        try:
            feed = json.loads(feed)
        except ValueError as exc:
            raise InvalidInput(f"{source}: not JSON ({exc})") from None
    if not isinstance(feed, Mapping) or not isinstance(feed.get("vulnerabilities"), list):
        raise InvalidInput(f"{source}: not an NVD JSON 2.0 feed (no 'vulnerabilities' list)")
    records: list[CveRecord] = []
    for i, item in enumerate(feed["vulnerabilities"]):
        cve = item.get("cve") if isinstance(item, Mapping) else None
        if not isinstance(cve, Mapping) or not isinstance(cve.get("id"), str):
            raise InvalidInput(f"{source}: vulnerabilities[{i}] has no cve.id")
        records.append(parse_cve(cve, source=source))
    return records


def parse_cve(cve: Mapping[str, Any], *, source: str = "feed") -> CveRecord:
    """One ``cve`` object of a feed → :class:`CveRecord`."""
    cve_id = cve["id"]
    description = next(
        (d.get("value", "") for d in cve.get("descriptions") or () if d.get("lang") == "en"), ""
    )
    try:
        cvss = _pick_cvss(cve.get("metrics") or {})
    except InvalidInput as exc:
        raise InvalidInput(f"{source}: {cve_id}: {exc}") from None
    ranges: list[CpeRange] = []
    for config in cve.get("configurations") or ():
        nodes = [n for n in config.get("nodes") or () if not n.get("negate")]
        and_config = config.get("operator") == "AND" and len(nodes) > 1
        for node in nodes:
            platforms: tuple[str, ...] = ()
            if and_config:
                platforms = tuple(
                    m["criteria"]
                    for other in nodes
                    if other is not node
                    for m in other.get("cpeMatch") or ()
                )
            for match in node.get("cpeMatch") or ():
                parsed = _parse_match(cve_id, match, platforms, source)
                if parsed is not None:
                    ranges.append(parsed)
    return CveRecord(
        cve_id, description, cvss, tuple(ranges), cve.get("published"), cve.get("lastModified")
    )


def _parse_match(
    cve_id: str, match: Mapping[str, Any], platforms: tuple[str, ...], source: str
) -> CpeRange | None:
    parts = _CPE_SPLIT.split(str(match.get("criteria", "")))
    if len(parts) < 7 or parts[:2] != ["cpe", "2.3"]:
        raise InvalidInput(f"{source}: {cve_id}: bad CPE {match.get('criteria')!r}")
    if parts[2] != "a" or not match.get("vulnerable", True):
        return None  # operating systems and hardware, and non-vulnerable context entries
    return CpeRange(
        cve_id,
        parts[3],
        parts[4],
        parts[5],
        parts[6],
        match.get("versionStartIncluding"),
        match.get("versionStartExcluding"),
        match.get("versionEndIncluding"),
        match.get("versionEndExcluding"),
        True,
        platforms,
    )  # vulnerable: the others were dropped above


def load_feed(path: str | Path) -> list[CveRecord]:
    """:func:`parse_feed` of a file; InvalidInput naming the file if unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read it ({exc.strerror})") from None
    return parse_feed(text, source=str(path))


@cache
def sample_records() -> tuple[CveRecord, ...]:
    """The shipped sample feed (``data/nvd-sample.json``), parsed once."""
    text = resources.files(__package__).joinpath("data/nvd-sample.json").read_bytes()
    return tuple(parse_feed(text, source="nvd-sample.json"))


# ---------------------------------------------------------------- matching


def cpe_products(product: str | None) -> tuple[str, ...]:
    """The CPE vendor:product keys an identified product name is filed under; () if unknown."""
    return PRODUCT_CPES.get((product or "").strip().lower(), ())


def match(product_key: str, version: str | None, ranges: Iterable[CpeRange]) -> list[str]:
    """Sorted ids of the CVEs whose ranges hold ``version`` of ``product_key`` (vendor:product)."""
    if not version:
        return []
    key = product_key.lower()
    return sorted({r.cve_id for r in ranges if r.key == key and r.matches(version)})


def find_cves(
    product: str | None, version: str | None, records: Sequence[CveRecord]
) -> list[CveRecord]:
    """The records that apply to an identified product/version, most severe first."""
    keys = cpe_products(product)
    if not keys or not version:
        return []
    ids: set[str] = set()
    for key in keys:
        ids.update(match(key, version, (r for rec in records for r in rec.ranges)))
    found = [rec for rec in records if rec.cve_id in ids]
    return sorted(found, key=lambda rec: (-rec.score, rec.cve_id))


def platform_condition(
    record: CveRecord, product: str | None, version: str | None
) -> tuple[str, ...] | None:
    """What else must hold for ``record`` to apply to ``version`` of ``product``.

    None: it does not apply (no range holds the version); (): it applies on the version alone;
    otherwise the vendor:product of the platforms its AND configurations require (say
    ``debian:debian_linux``), none of which a banner shows — the caller reports it as
    conditional rather than as a finding.
    """
    if not version:
        return None
    keys = cpe_products(product)
    held = [r for r in record.ranges if r.key in keys and r.matches(version)]
    if not held:
        return None
    if any(not r.platforms for r in held):
        return ()
    return tuple(sorted({":".join(p.split(":")[3:5]) for r in held for p in r.platforms}))


def severity_rank(severity: str) -> int:
    """0 (none) … 4 (critical); unknown words rank as none."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


__all__ = [
    "SEVERITIES",
    "PRODUCT_CPES",
    "Cvss",
    "CpeRange",
    "CveRecord",
    "version_tokens",
    "compare_versions",
    "score_vector",
    "parse_feed",
    "parse_cve",
    "load_feed",
    "sample_records",
    "cpe_products",
    "match",
    "find_cves",
    "platform_condition",
    "severity_rank",
]
