"""Files shipped inside the package (package data), found wherever lancet_ds is installed: the DeepSpeed
configs (`ds_configs/` at the repository root links to them, for the README's commands)."""

from __future__ import annotations

from pathlib import Path

DS_CONFIGS = Path(__file__).resolve().parent / "ds_configs"
DEFAULT_DS_CONFIG = str(DS_CONFIGS / "zero3.json")
"""ZeRO-3, the configuration every command uses unless told otherwise."""
