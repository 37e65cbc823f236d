"""Which site this ClientApp serves and whether it accepts a round (hash checks); no torch import.

A site whose preprocessing hash or model hash differs from the coordinator's refuses before any data,
model or torch is loaded, with a reason naming both hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.protocol import REFUSED, RoundConfig, SiteSettings, describe_error
from common.site_cache import read_prep_hash

#: Node-config keys a SuperNode is started with (``flwr-client`` writes them; simulation injects partition-id).
DATA_PATH = "data-path"
SITE_NAME_KEY = "site-name"
PARTITION_ID = "partition-id"


class SiteRefusal(Exception):
    """This site will not take part in the round: error ``code`` + the short ``public`` reason go to the
    coordinator; the full message (which may name paths or patients) stays in the site's own log."""

    def __init__(self, message: str, code: int = REFUSED, public: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.public = public or describe_error(code)


@dataclass(frozen=True)
class SiteLocation:
    """The site label ("" = take it from the cache) and its cache directory."""

    name: str
    path: str


def locate_site(node_config: Mapping[str, Any], sites: Mapping[int, tuple[str, str]] | None) -> SiteLocation:
    """(site name, cache path) from the node config, or from the injected simulation partition map."""
    if DATA_PATH in node_config:
        return SiteLocation(str(node_config.get(SITE_NAME_KEY, "")) or "", str(node_config[DATA_PATH]))
    if sites is not None and PARTITION_ID in node_config:
        pid = int(node_config[PARTITION_ID])
        if pid not in sites:
            raise SiteRefusal(f"no site cache configured for partition {pid}", public="no site data configured")
        return SiteLocation(*sites[pid])
    raise SiteRefusal("no site data: start the SuperNode with --node-config 'data-path=\"/path/to/cache\"'",
                      public="no site data configured")


def check_round(settings: SiteSettings, site: SiteLocation, rc: RoundConfig) -> str:
    """Refuse when the coordinator's prep/model hash differs from this site's (cheap: no torch, no data);
    returns the site cache's prep hash. Whether the site APPROVES that model is the policy's
    (``client.rules``)."""
    try:
        mine_prep = read_prep_hash(site.path)
    except (FileNotFoundError, ValueError) as exc:
        raise SiteRefusal(str(exc), public="site data missing or unreadable") from exc
    mine_model = settings.model().hash()
    name = site.name or Path(site.path).name
    label = f"site {site.name} refuses: " if site.name else ""  # the label every reply carries; never the path
    if rc.prep_hash != mine_prep:
        short = f"preprocessing hash mismatch: server prep-hash {rc.prep_hash or '(none)'} != site {mine_prep}"
        raise SiteRefusal(f"site {name} refuses: {short}; re-prepare the site's data with the federation's "
                          "PrepConfig", public=label + short)
    if rc.model_hash != mine_model:
        short = f"model hash mismatch: server model-hash {rc.model_hash or '(none)'} != site {mine_model}"
        raise SiteRefusal(f"site {name} refuses: {short}", public=label + short)
    return mine_prep
