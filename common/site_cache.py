"""Site-cache file names and the cheap prep-hash reader (minimal stand-in; the cache-format owner's module
replaces this file at merge with the same names). No torch/pandas import."""

from __future__ import annotations

import json
from pathlib import Path

#: ``{"config": PrepConfig as dict, "hash": PrepConfig.hash()}`` in every site cache.
PREP_CONFIG = "prep_config.json"


def read_prep_hash(cache_dir: str | Path) -> str:
    """The prep hash a site cache was made with; FileNotFoundError / ValueError naming the file."""
    path = Path(cache_dir) / PREP_CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"site cache file missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("hash"), str):
        raise ValueError(f"{path} has no 'hash' string (re-prepare the site cache)")
    return data["hash"]
