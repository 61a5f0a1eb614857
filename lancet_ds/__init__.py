"""lancet_ds: LANCET (LinFAC influence + IBO post-training) under DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
