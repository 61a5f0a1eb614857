"""`lancet-ds bench`: figures measured in one run, as ratios against a baseline run in the same process
or back to back (issue 7). Never a timed test: nothing here asserts a speed.

* `sizes`: the quick and full presets.
* `synthetic`: random-token Llama models and sequences (speed), synthetic documents (TF-IDF).
* `influence_speed`: plain forward+backward against our LinFAC / EK-FAC pipelines, factor bytes.
* `kron`: kronfluence's EK-FAC on the same model, data and queries (optional peer).
* `tfidf_speed`: our streaming recall against scikit-learn and bm25s, one process each (peak RSS).
* `steps`: an IBO step against a plain supervised step on the same engine; ZeRO-3 parameter memory.
* `quality`: recall quality and the correction table on the demo world.
* `counterfactual`: the impure model retrained without each method's top-k (beside the whole corpus retrained
  with another seed, the control), and without (or with only) each kind of contaminated sample.
* `worker`: the entry point each measurement runs in (its own process, under the launcher or not).
* `run`: orchestrates the workers and writes `bench.json`; `table` writes `bench.md`.
"""
