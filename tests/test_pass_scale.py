"""The influence passes' loss scale (`influence.pass_scale`): real float16 backward passes of a tiny Llama loaded
with from_pretrained (torch runs float16 on the CPU; DeepSpeed's CPU accelerator refuses fp16 engines, so these
run on the plain module, as `compute_factors` can), checked against the same passes in float32; the redo of an
overflowing pass on two real ZeRO-3 ranks; and the errors a non-finite gradient gives."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from conftest import launch, run_script
from lancet_ds.influence.covariance import BatchContext, LinfacSums
from lancet_ds.influence.fit import tap_points
from lancet_ds.influence.gradients import InfluenceScores, QueryGradientSums
from lancet_ds.influence.pass_scale import FP16_MIN_SCALE, NonFiniteGradientError, PassScale
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.sublayers import discover
from test_factors_bruteforce import V, fit_set


def save_model(path, embed_scale: float = 1.0, lm_head_scale: float = 1.0, nan_in: str | None = None):
    """A 2-layer Llama written with save_pretrained. Scaling the embeddings up makes the residual stream large
    and so every sublayer's output gradient small (RMSNorm divides by the stream's size), as in deep models
    whose residual stream grows; the weights themselves stay well inside float16's range."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(embed_scale)
        model.lm_head.weight.mul_(lm_head_scale)
        if nan_in:
            dict(model.named_parameters())[nan_in][0, 0] = float("nan")
    model.save_pretrained(str(path))
    return path


def load(path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def passes(model, consumer_of, scale: PassScale | None = None, micro_batch: int = 4):
    """Run the passes over 8 random sequences of 8-16 tokens into `consumer_of(ctx)`; returns the consumer and what
    `after_pass` kept."""
    ctx = BatchContext()
    consumer, kept = consumer_of(ctx), []

    def after(_):
        if isinstance(consumer, InfluenceScores):
            kept.append((consumer.current.clone(), {k: v.clone() for k, v in consumer.by_sublayer.items()}))
            consumer.reset()

    run_passes(model, fit_set(8, lengths=(8, 16)), tap_points(discover(model), "linfac"), consumer, ctx, torch.float64,
               micro_batch, 0, "empirical", 0, after_pass=after, loss_scale=scale)
    return consumer, kept


def rel(x, y) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


def linfac(ctx):
    return LinfacSums(ctx, torch.float64)


def test_float16_passes_keep_the_gradients_that_underflow_unscaled(tmp_path):
    """Gradients around 1e-7: in float16 without a scale they lose most of their digits or become 0, and the
    LinFAC factor S and the query gradients are off by a fifth; with the dynamic scale float16 is as close to
    float32 as at ordinary magnitudes (its own rounding, ~5e-4)."""
    path = save_model(tmp_path / "m", embed_scale=1e5, lm_head_scale=1e-2)
    reference = load(path, torch.float32)
    half = load(path, torch.float16)
    assert PassScale.for_model(half).dynamic and not PassScale.for_model(reference).dynamic

    def query_sums(ctx):
        return QueryGradientSums(ctx, torch.float64, [i % 2 for i in range(8)], 2)

    for consumer_of, key in ((linfac, "S"), (query_sums, "V")):
        want = passes(reference, consumer_of)[0].sums
        plain = passes(half, consumer_of, PassScale())[0].sums
        scale = PassScale.for_model(half)
        scaled = passes(half, consumer_of, scale)[0].sums
        for name in want:
            assert rel(plain[name][key], want[name][key]) > 0.1, (name, key)
            assert rel(scaled[name][key], want[name][key]) < 2e-3, (name, key)
        assert scale.scale >= 2.0 ** 10  # it stayed high, where these gradients are representable
    a_plain, a_scaled, a_want = (passes(m, linfac, s)[0].sums for m, s in
                                 ((half, PassScale()), (half, None), (reference, None)))
    for name in a_want:  # A reads the activations only: no scale touches it
        assert rel(a_scaled[name]["A"], a_want[name]["A"]) < 2e-3
        assert torch.equal(a_scaled[name]["A"], a_plain[name]["A"])


class InfAt:
    """Turns one entry of the gradient at `module`'s output into inf in the first `times` backward passes that reach
    it. Its tensor hook is registered before the taps' own (its forward hook is older), so the taps see the inf,
    and autograd carries it on to the earlier layers."""

    def __init__(self, module, times: int = 1):
        self.left = times
        self.handle = module.register_forward_hook(self.forward)

    def forward(self, module, args, out) -> None:
        out.register_hook(self.grad)

    def grad(self, g):
        if self.left <= 0:
            return g
        self.left -= 1
        g = g.clone()
        g.view(-1)[0] = float("inf")
        return g


def consumers(model) -> dict:
    """LinFAC sums, query gradients (3 batches) and per-sublayer scores against those gradients as IHVPs."""
    def query_sums(ctx):
        return QueryGradientSums(ctx, torch.float64, [i % 3 for i in range(8)], 3)

    ihvps = {n: s["V"] for n, s in passes(model, query_sums, PassScale(2.0 ** 10))[0].sums.items()}
    return {"linfac": linfac, "queries": query_sums,
            "scores": lambda ctx: InfluenceScores(ctx, torch.float64, ihvps, per_sublayer=True)}


def assert_same(kind: str, got, want) -> None:
    """Two `passes` results equal to the bit: the sums, or each pass's scores and their per-sublayer parts."""
    (consumer, kept), (consumer_w, kept_w) = got, want
    if kind == "scores":
        assert len(kept) == len(kept_w) == 2
        for (cur, by), (cur_w, by_w) in zip(kept, kept_w):
            assert torch.equal(cur, cur_w) and by.keys() == by_w.keys()
            assert all(torch.equal(by[k], by_w[k]) for k in by)
    else:
        assert consumer.sums.keys() == consumer_w.sums.keys()
        for name in consumer_w.sums:
            for key in consumer_w.sums[name]:
                assert torch.equal(consumer.sums[name][key], consumer_w.sums[name][key]), (kind, name, key)


def test_an_overflowing_float16_pass_is_redone_until_it_does_not(tmp_path):
    """From a scale of 2^40 the first pass overflows (at the logits, so at every sublayer) and is redone until it
    does not; the factors, query gradients and scores (per sublayer too) equal those of passes at a fixed 2^10, to
    the bit: scaling by a power of 2 changes no float16 rounding away from overflow and underflow. (At a fixed 16
    the first layer's S already differs by 5e-6: some of its gradients fall among float16's subnormals there.)"""
    half = load(save_model(tmp_path / "m"), torch.float16)
    for kind, consumer_of in consumers(half).items():
        fixed, high = PassScale(2.0 ** 10), PassScale(2.0 ** 40, dynamic=True)
        assert_same(kind, passes(half, consumer_of, high), passes(half, consumer_of, fixed))
        assert fixed.redone == 0 and high.redone >= 20 and high.scale <= 2.0 ** 20, kind


def test_a_try_that_overflows_at_one_sublayer_counts_each_sublayer_once(tmp_path):
    """The first try overflows at layer 0's MLP alone (an inf injected there). Layer 1's MLP, which backward reaches
    first, is finite and counted; the redo hands it zeros and counts layer 0. The LinFAC sums (A too, which reads
    the activations only), query gradients and per-sublayer scores equal those of passes without the inf, to the
    bit: had layer 1 been counted again, its A and S would be doubled and its scores overwritten or doubled."""
    half = load(save_model(tmp_path / "m"), torch.float16)
    for kind, consumer_of in consumers(half).items():
        want = passes(half, consumer_of, PassScale(2.0 ** 10))
        inf = InfAt(half.model.layers[0].mlp)
        scale = PassScale(2.0 ** 12, dynamic=True)
        try:
            got = passes(half, consumer_of, scale)
        finally:
            inf.handle.remove()
        assert inf.left == 0 and scale.redone == 1 and scale.scale == 2.0 ** 11, kind
        assert_same(kind, got, want)


def test_the_gate_hands_each_point_on_once_across_tries_and_the_scale_grows_back():
    a, g = torch.ones(1, 2, 3, dtype=torch.float16), torch.full((1, 2, 4), 8.0, dtype=torch.float16)
    inf = g.clone()
    inf[0, 0, 0] = float("inf")
    loss = torch.tensor(1.0)
    scale = PassScale(8.0, dynamic=True, growth_interval=2)
    first = scale.gate("x", a, g)
    assert torch.equal(first[0], a) and torch.equal(first[1], torch.ones(1, 2, 4)) and first[1].dtype == torch.float32
    assert torch.equal(scale.gate("x", a, g)[1], torch.ones(1, 2, 4))  # a module called twice: both deliveries count
    assert not scale.gate("y", a, inf)[1].any()  # the overflowed point hands on zeros
    assert not scale.finish("pass 1", ["s0"], loss) and scale.scale == 4.0 and scale.redone == 1
    for _ in range(2):  # both of x's deliveries were counted in the first try: zeros now
        again = scale.gate("x", a, g)
        assert not again[0].any() and not again[1].any()
    assert torch.equal(scale.gate("y", a, g)[1], torch.full((1, 2, 4), 2.0))
    assert scale.finish("pass 1", ["s0"], loss)
    assert torch.equal(scale.gate("x", a, g)[1], torch.full((1, 2, 4), 2.0))  # a new pass: counted again
    assert scale.finish("pass 2", ["s1"], loss) and scale.scale == 8.0  # two clean passes in a row: doubled


def test_a_non_finite_forward_stops_the_pass_at_once(tmp_path):
    """A NaN weight makes the loss NaN: no scale helps, so even in float16 the first try stops the pass, with
    the ranks, samples and what to check."""
    path = save_model(tmp_path / "m", nan_in="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(NonFiniteGradientError) as err:
        passes(load(path, torch.float32), linfac)
    assert str(err.value) == (
        "passes 1 of 2: the forward pass gave NaN or inf (the loss or a sublayer's input) on rank 0's micro-batch "
        "(s0, s1, s2, s3). Check that the checkpoint's weights are finite and that these samples' loss is finite in "
        "a plain forward pass.")
    assert err.value.on_every_rank
    scale = PassScale.for_model(half := load(path, torch.float16))
    with pytest.raises(NonFiniteGradientError, match=r"micro-batch \(s0, s1, s2, s3\)\. .*run the influence stages "
                                                     r"in bfloat16"):
        passes(half, linfac, scale)
    assert scale.redone == 0


def test_a_non_finite_gradient_stops_the_pass_naming_the_sublayer(tmp_path):
    """A finite loss whose gradient is inf at one sublayer: in float32 the pass stops at once; in float16 the scale
    backs off to its floor first."""
    path = save_model(tmp_path / "m")
    full = load(path, torch.float32)
    inf = InfAt(full.model.layers[0].mlp)
    with pytest.raises(NonFiniteGradientError) as err:
        passes(full, linfac)
    inf.handle.remove()
    assert str(err.value).startswith(
        "passes 1 of 2: the backward pass gave NaN or inf at sublayers model.layers.0.mlp on rank 0's micro-batch "
        "(s0, s1, s2, s3), though the loss was finite. Check that the checkpoint's weights are finite")
    half = load(path, torch.float16)
    inf = InfAt(half.model.layers[0].mlp, times=10 ** 6)
    scale = PassScale.for_model(half)
    with pytest.raises(NonFiniteGradientError, match=r"overflowed float16 even at a loss scale of 0\.000976562, at "
                                                     r"sublayers model\.layers\.0\.mlp .*Run the influence stages"):
        passes(half, linfac, scale)
    inf.handle.remove()
    assert scale.scale == FP16_MIN_SCALE  # it backed off as far as it goes before giving up


SCRIPT = textwrap.dedent('''
    """LinFAC sums of one sample on two ZeRO-3 ranks: rank 1 has only a loss-free filler, so its gradients stay
    finite at any scale, yet it must redo each overflowing try with rank 0 or the gathers hang. Runs the passes with
    the default scale (1 in float32) and from 2^140, where float32 overflows; writes both, and per rank the tries
    and those in which the rank itself met a non-finite gradient."""
    import sys

    import torch

    from lancet_ds import distributed as dist_utils
    from lancet_ds.data.records import EncodedSample
    from lancet_ds.fileio import write_json
    from lancet_ds.influence.covariance import BatchContext, LinfacSums
    from lancet_ds.influence.fit import tap_points
    from lancet_ds.influence.pass_scale import PassScale
    from lancet_ds.influence.passes import run_passes
    from lancet_ds.influence.sublayers import discover
    from lancet_ds.modeling import load_ds_config, load_model, make_inference_engine

    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    model_dir, out = argv[0], argv[1]
    dist_utils.init_distributed()
    cfg = load_ds_config("ds_configs/zero3.json")
    engine = make_inference_engine(load_model(model_dir, cfg), cfg)
    data = [EncodedSample("s0", [5, 9, 12, 7, 30, 11], [0, 0, 1, 1, 1, 1])]
    points = tap_points(discover(engine.module), "linfac")
    seen = {"tries": 0, "overflowed_here": 0, "bad": False}
    gate, finish = PassScale.gate, PassScale.finish

    def counting_gate(self, name, a, g):
        seen["bad"] = seen["bad"] or not bool(torch.isfinite(g).all())
        return gate(self, name, a, g)

    def counting_finish(self, where, ids, loss):
        seen["tries"] += 1
        seen["overflowed_here"] += seen["bad"]
        seen["bad"] = False
        return finish(self, where, ids, loss)

    PassScale.gate, PassScale.finish = counting_gate, counting_finish
    rows = {}
    ok = False
    try:
        for name, scale in (("default", None), ("high", PassScale(2.0 ** 140, dynamic=True))):
            ctx = BatchContext()
            sums = LinfacSums(ctx, torch.float64)
            tries = []
            seen.update(tries=0, overflowed_here=0)
            run_passes(engine.module, data, points, sums, ctx, torch.float64, 1, 0, "empirical", 0, loss_scale=scale,
                       after_pass=lambda done: tries.append(done))
            for k in sorted(sums.sums):
                for key in sorted(sums.sums[k]):
                    dist_utils.all_reduce_sum(sums.sums[k][key])
            rows[name] = {"sums": {f"{k}/{key}": t.tolist() for k, s in sums.sums.items() for key, t in s.items()},
                          "redone": dist_utils.all_gather_object(scale.redone if scale else 0),
                          "seen": dist_utils.all_gather_object(dict(seen)),
                          "scale": scale.scale if scale else 1.0, "passes": tries}
        dist_utils.on_rank0(lambda: write_json(out, rows))
        ok = True
    finally:
        dist_utils.shutdown(together=ok)
''')


def test_two_zero3_ranks_redo_an_overflowing_pass_together(tmp_path, tiny_model_dir):
    out = tmp_path / "rows.json"
    run_script(tmp_path / "pass_scale_check.py", SCRIPT, [str(tiny_model_dir), str(out)], 2)
    rows = json.loads(out.read_text())
    default, high = rows["default"], rows["high"]
    assert default["passes"] == high["passes"] == [1]
    assert default["redone"] == [0, 0] and [s["tries"] for s in default["seen"]] == [1, 1]
    redone, (rank0, rank1) = high["redone"], high["seen"]
    assert redone[0] == redone[1] > 0 and high["scale"] < 2.0 ** 140
    assert rank0["tries"] == rank1["tries"] == redone[0] + 1  # in step: every overflowing try redone on both
    assert rank0["overflowed_here"] == redone[0] and rank1["overflowed_here"] == 0
    assert high["sums"].keys() == default["sums"].keys()
    for key, want in default["sums"].items():
        assert torch.equal(torch.tensor(high["sums"][key]), torch.tensor(want)), key


def test_a_nan_model_stops_a_two_rank_fit_with_exit_1(tmp_path, tiny_model_dir, small_corpus):
    """End to end: `lancet-ds fit` (sampled Fisher labels, the default) on two ZeRO-3 ranks over a checkpoint with a
    NaN weight exits 1 on the first pass with the forward error from every rank, and no rank is left hanging."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(str(tmp_path / "nan_model"))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(tmp_path / "nan_model"))
    proc = launch(["fit", "--model", str(tmp_path / "nan_model"), "--data", str(small_corpus), "--out",
                   str(tmp_path / "run"), "--fit-responses", "corpus", "--num-samples", "8", "--micro-batch", "2",
                   "--max-length", "64"], nproc=2, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count("error: fit: covariance pass 1 of 2: the forward pass gave NaN or inf (the loss or a "
                             "sublayer's input) on rank 0's micro-batch") == 2
    assert "terminate called" not in proc.stderr + proc.stdout
