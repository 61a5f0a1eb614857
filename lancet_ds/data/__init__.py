"""Data layer (DESIGN.md section 5): readers, schema adapters, the bad-record policy, tokenisation."""
