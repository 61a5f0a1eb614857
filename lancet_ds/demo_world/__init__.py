"""The demo world (DESIGN.md section 6): a synthetic, benign, contaminated instruction corpus with
ground-truth labels, a locally trained tokenizer, impure and safe models, and a judge."""
