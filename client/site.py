"""Which site this ClientApp serves and whether it accepts a round (hash checks); no torch import.

A site whose preprocessing hash or model hash differs from the coordinator's refuses before any data,
model or torch is loaded, with a reason naming both hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.protocol import REFUSED, RoundConfig, SiteSettings
from common.site_cache import read_prep_hash

#: Node-config keys a SuperNode is started with (``flwr-client`` writes them; simulation injects partition-id).
DATA_PATH = "data-path"
SITE_NAME_KEY = "site-name"
PARTITION_ID = "partition-id"


class SiteRefusal(Exception):
    """This site will not take part in the round (the message is sent to the server as error ``code``)."""

    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.code = code


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
            raise SiteRefusal(f"no site cache configured for partition {pid}")
        return SiteLocation(*sites[pid])
    raise SiteRefusal("no site data: start the SuperNode with --node-config 'data-path=\"/path/to/cache\"'")


def check_round(settings: SiteSettings, site: SiteLocation, rc: RoundConfig) -> None:
    """Refuse when the coordinator's prep/model hash differs from this site's (cheap: no torch, no data)."""
    try:
        mine_prep = read_prep_hash(site.path)
    except (FileNotFoundError, ValueError) as exc:
        raise SiteRefusal(str(exc)) from exc
    mine_model = settings.model().hash()
    name = site.name or Path(site.path).name
    if rc.prep_hash != mine_prep:
        raise SiteRefusal(f"site {name} refuses: preprocessing hash mismatch: server prep-hash "
                          f"{rc.prep_hash or '(none)'} != site cache prep-hash {mine_prep}; re-prepare the "
                          f"site's data with the federation's PrepConfig")
    if rc.model_hash != mine_model:
        raise SiteRefusal(f"site {name} refuses: model hash mismatch: server model-hash "
                          f"{rc.model_hash or '(none)'} != site model-hash {mine_model}")
