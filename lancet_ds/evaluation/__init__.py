"""Before/after measurements of a correction (DESIGN.md section 2, `evaluate`)."""
