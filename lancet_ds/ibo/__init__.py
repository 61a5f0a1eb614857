"""Influence-driven Bregman Optimization (IBO): selection of D⁺ / D⁻ / neutral and the objective."""
