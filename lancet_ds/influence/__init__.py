"""Influence machinery: sublayers, ZeRO-3-safe hooks, LinFAC / EK-FAC factors (DESIGN.md section 3)."""
