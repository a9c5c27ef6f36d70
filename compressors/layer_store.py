"""Where GemFilter's calibrated layer per model lives: TOME_HOME/calibration/gemfilter.json, keyed by model.

gemfilter_layers.json beside this module ships defaults written by `tome calibrate --only gemfilter --output`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE = Path("calibration") / "gemfilter.json"  # under TOME_HOME
SHIPPED = Path(__file__).with_name("gemfilter_layers.json")
FALLBACK_DEPTH = 0.4  # share of layers when nothing is calibrated: the paper's choices sit at 0.4-0.6 of the stack


def model_key(model: Any) -> str:
    """A model's name for stored settings: its folder's name (the native engine loads from a folder)."""
    name = Path(str(getattr(model.config, "name_or_path", "") or "")).name
    return name or str(model.config.model_type)


def load_store(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def stored_layer(key: str, total_layers: int, home: Path | None) -> int:
    """The calibrated r for a model: TOME_HOME's calibration first, then the shipped defaults, then a guess."""
    for path in ([home / STORE] if home else []) + [SHIPPED]:
        entry = load_store(path).get(key)
        if entry and entry.get("num_layers") == total_layers:
            return int(entry["layer"])
    guess = max(1, round(total_layers * FALLBACK_DEPTH))
    log.warning(
        "no gemfilter calibration for %s; using layer %d of %d (run `tome calibrate --only gemfilter`)",
        key,
        guess,
        total_layers,
    )
    return guess


def save_entry(result: Any, path: Path) -> None:
    """Add or replace one model's entry (a dataclass with a `model` field); other models' entries stay."""
    store = load_store(path)
    store[result.model] = asdict(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
