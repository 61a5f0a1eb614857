"""LinFAC and EK-FAC factors from the hooks equal an independent brute-force computation: per-sequence
autograd through additive probes on the sublayer outputs (no hooks), explicit Python sums over
tokens, float64, on tiny models of every supported architecture."""

from __future__ import annotations

import random

import pytest
import torch

from lancet_ds.data.records import EncodedSample
from lancet_ds.influence.fisher import sample_labels
from lancet_ds.influence.fit import FitArgs, compute_factors, tap_points
from lancet_ds.influence.sublayers import discover

V = 64
CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2),
    "mistral": dict(model_type="mistral", hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1),
    "qwen2": dict(model_type="qwen2", hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1),
    "gpt2": dict(model_type="gpt2", n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=1),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=2, bos_token_id=0, eos_token_id=1),
    "opt": dict(model_type="opt", hidden_size=16, ffn_dim=24, num_hidden_layers=2, num_attention_heads=2,
                word_embed_proj_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=2),
}


def tiny_model(tmp_path, arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(CONFIGS[arch])
    config = AutoConfig.for_model(kw.pop("model_type"), vocab_size=V, max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / arch))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / arch), dtype=torch.float64)
    return model.eval()


def fit_set(n: int = 5, lengths: tuple[int, int] = (5, 12)) -> list[EncodedSample]:
    """`n` random sequences of `lengths` tokens, the first 2-4 the prompt."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        t, p = rng.randint(*lengths), rng.randint(2, 4)
        out.append(EncodedSample(f"s{i}", [rng.randrange(3, V) for _ in range(t)], [0] * p + [1] * (t - p)))
    return out


class Probes:
    """Replace module.forward to record the input and add a zero probe δ to the output: ∂L/∂δ = ∂L/∂s."""

    def __init__(self, model, points):
        self.modules = dict(model.named_modules())
        self.points, self.inputs, self.deltas, self.saved = points, {}, {}, []

    def __enter__(self):
        for p in self.points:
            for role, mod_name in (("in", p.input_module), ("out", p.output_module)):
                mod = self.modules[mod_name]
                orig = mod.forward
                self.saved.append((mod, "forward" in mod.__dict__, orig))
                mod.forward = self._wrap(orig, p.name, role)
        return self

    def _wrap(self, orig, name, role):
        def forward(*args, **kwargs):
            if role == "in":
                self.inputs[name] = args[0] if args else kwargs["hidden_states"]
                if self.modules_same(name):
                    return self._add_delta(orig(*args, **kwargs), name)
                return orig(*args, **kwargs)
            return self._add_delta(orig(*args, **kwargs), name)
        return forward

    def modules_same(self, name):
        p = next(p for p in self.points if p.name == name)
        return p.input_module == p.output_module

    def _add_delta(self, out, name):
        s = out[0] if isinstance(out, tuple) else out
        delta = torch.zeros_like(s, requires_grad=True)
        self.deltas[name] = delta
        return (s + delta, *out[1:]) if isinstance(out, tuple) else s + delta

    def __exit__(self, *exc):
        for mod, had, orig in reversed(self.saved):
            if had:
                mod.forward = orig
            else:
                del mod.forward


def brute_force(model, samples, points, method: str, fisher: str, seed: int = 0):
    names = [p.name for p in points]
    A, S, G_all = {}, {}, {n: [] for n in names}
    tokens = 0
    for i, s in enumerate(samples):
        ids = torch.tensor([s.input_ids])
        with Probes(model, points) as probes:
            logits = model(input_ids=ids).logits
            labels = torch.tensor([[t if m else -100 for t, m in zip(s.input_ids, s.loss_mask)]])
            if fisher == "sampled":
                labels = sample_labels(logits, labels, [i], seed)
            loss = 0
            for t in range(1, len(s.input_ids)):
                if s.loss_mask[t]:
                    loss = loss - torch.log_softmax(logits[0, t - 1], -1)[labels[0, t]]
            grads = torch.autograd.grad(loss, [probes.deltas[n] for n in names])
        T = len(s.input_ids)
        tokens += T
        for name, g in zip(names, grads):
            a = probes.inputs[name].detach().reshape(T, -1)  # OPT flattens (B, T, D) to (B·T, D)
            g = g.reshape(T, -1)
            a_sum = sum(a[t] for t in range(T))
            g_sum = sum(g[t] for t in range(T))
            if method == "linfac":
                dA, dS = torch.outer(a_sum / T, a_sum / T), torch.outer(g_sum, g_sum)
            else:
                dA = sum(torch.outer(a[t], a[t]) for t in range(T))
                dS = sum(torch.outer(g[t], g[t]) for t in range(T))
            A[name] = A.get(name, 0) + dA
            S[name] = S.get(name, 0) + dS
            G_all[name].append(sum(torch.outer(g[t], a[t]) for t in range(T)))
    denom = len(samples) if method == "linfac" else tokens
    return {n: A[n] / denom for n in names}, {n: S[n] / denom for n in names}, G_all


def rel(x, y):
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("method", ["linfac", "ekfac"])
def test_factors_equal_brute_force(tmp_path, arch, method):
    model = tiny_model(tmp_path, arch)
    samples = fit_set()
    points = tap_points(discover(model, attention=(arch == "llama")), method)
    args = FitArgs(method=method, fisher="empirical", dtype="float64", micro_batch=2, eigen_correction=True)
    factors, _ = compute_factors(model, samples, points, args, pad_id=2, partial_dir=tmp_path / "p", fingerprint="t")
    A, S, G = brute_force(model, samples, points, method, "empirical")
    for p in points:
        f = factors[p.name]
        assert rel(f["A"], A[p.name]) < 1e-5, (p.name, "A")
        assert rel(f["S"], S[p.name]) < 1e-5, (p.name, "S")
        assert torch.allclose(f["QA"] @ torch.diag(f["LA"]) @ f["QA"].T, f["A"], atol=1e-10 * float(f["A"].abs().max()))
        lam = sum((f["QS"].T @ g @ f["QA"]) ** 2 for g in G[p.name]) / len(samples)
        assert rel(f["Lambda"], lam) < 1e-5, (p.name, "Lambda")


def test_sampled_fisher_equals_brute_force_with_the_same_draws(tmp_path):
    model = tiny_model(tmp_path, "llama")
    samples = fit_set(6)
    points = tap_points(discover(model), "linfac")
    args = FitArgs(method="linfac", fisher="sampled", dtype="float64", micro_batch=4, seed=5)
    factors, _ = compute_factors(model, samples, points, args, pad_id=2, partial_dir=tmp_path / "p", fingerprint="t")
    A, S, _ = brute_force(model, samples, points, "linfac", "sampled", seed=5)
    _, S_emp, _ = brute_force(model, samples, points, "linfac", "empirical")
    for p in points:
        assert rel(factors[p.name]["A"], A[p.name]) < 1e-5
        assert rel(factors[p.name]["S"], S[p.name]) < 1e-5
        assert rel(S[p.name], S_emp[p.name]) > 1e-3  # the draws really differ from the dataset labels


def test_unknown_architecture_lists_the_modules(tmp_path):
    from lancet_ds.errors import ConfigError

    model = tiny_model(tmp_path, "llama")
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match=r"(?s)no default sublayers for model type 'mystery'.*model\.layers\.0\.mlp"):
        discover(model)
    subs = discover(model, [r"model\.layers\.(\d+)\.mlp\.gate_proj -> model\.layers\.(\d+)\.mlp\.down_proj"])
    assert [s.name for s in subs] == ["model.layers.0.mlp.gate_proj+down_proj", "model.layers.1.mlp.gate_proj+down_proj"]


def test_gradient_checkpointing_gives_the_same_factors(tmp_path):
    model = tiny_model(tmp_path, "llama")
    samples = fit_set()
    points = tap_points(discover(model, attention=True), "linfac")
    args = FitArgs(method="linfac", fisher="empirical", dtype="float64", micro_batch=2)
    plain, _ = compute_factors(model, samples, points, args, pad_id=2, partial_dir=tmp_path / "p1", fingerprint="t")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # transformers checkpoints only in training mode; this Llama has no dropout
    ckpt, _ = compute_factors(model, samples, points, args, pad_id=2, partial_dir=tmp_path / "p2", fingerprint="t")
    for p in points:
        assert rel(ckpt[p.name]["A"], plain[p.name]["A"]) < 1e-10
        assert rel(ckpt[p.name]["S"], plain[p.name]["S"]) < 1e-10
