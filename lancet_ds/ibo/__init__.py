"""Influence-driven Bregman Optimization (IBO): the objective's equations (`objective`), the selection of
D⁺ / D⁻ / neutral (`selection`), one step's draw and loss (`step`), the proximity gradient (`proximity`),
the frozen reference (`reference`), the training recipe (`recipe`) and the `correct` stage (`correct`)."""
