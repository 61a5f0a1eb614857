"""The correction step outside DeepSpeed (one process, no process group): `CorrectArgs` and its `validate()`,
the seeded per-step draw, and `step_loss` against the objective's terms computed sample by sample."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lancet_ds.data.records import EncodedSample
from lancet_ds.errors import ConfigError
from lancet_ds.ibo.correct import CorrectArgs
from lancet_ds.ibo.objective import bregman_loss, correction_loss, dpo_loss, log_ratio, nll
from lancet_ds.ibo.selection import Selection
from lancet_ds.ibo.step import TERMS, draw, method_terms, step_loss, unpairable_reason, usable_batches
from lancet_ds.options import build, field_docs


def test_default_options_are_valid_and_every_field_has_its_help():
    assert CorrectArgs().validate() == []
    assert set(field_docs(CorrectArgs)) == set(CorrectArgs.__dataclass_fields__)


@pytest.mark.parametrize("values, problem", [
    ({"steps": 0}, "steps: must be ≥ 1"), ({"lr": 0.0}, "lr: must be > 0"), ({"top_k": 0}, "top_k: must be ≥ 1"),
    ({"pair_batch": 0}, "pair_batch: must be ≥ 1"), ({"neutral_batch": -1}, "neutral_batch: must be ≥ 0"),
    ({"replay": -1}, "replay: must be ≥ 0"), ({"save_every": 0}, "save_every: must be ≥ 1"),
    ({"validate_every": -1}, "validate_every: must be ≥ 0"), ({"patience": -1}, "patience: must be ≥ 0"),
    ({"lam_prox": -0.1}, "lam_prox: must be ≥ 0"), ({"max_ppl_increase": -0.1}, "max_ppl_increase: must be ≥ 0"),
    ({"pareto_mass": 0.0}, "pareto_mass: must be > 0"), ({"pareto_mass": 1.5}, "pareto_mass: must be in [0, 1]"),
    ({"epsilon": 0.0}, "epsilon: must not be 0"), ({"max_length": 1}, "max_length: must be ≥ 2"),
    ({"patience": 2}, "patience: 2 needs validate_every > 0"),
    ({"judge_bars_negative": True}, "judge_bars_negative: needs positive_judge"),
    ({"neutral_likelihood": 1.0}, "neutral_likelihood: 1.0 needs method ibo and positive_judge"),
    ({"neutral_likelihood": 1.0, "method": "pbo", "positive_judge": "j"}, "neutral_likelihood: 1.0 needs method ibo"),
    ({"neutral_likelihood": -1.0}, "neutral_likelihood: must be ≥ 0"),
    ({"lr_schedule": "cosine"}, "lr_schedule: 'cosine' is not one of ['constant', 'linear']"),
    ({"lr_schedule": "linear", "steps": 10, "warmup_steps": 10}, "lr_schedule: linear decays over the steps after"),
])
def test_validate_names_each_problem(values, problem):
    problems = CorrectArgs(**values).validate()
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    with pytest.raises(ConfigError, match=problem.split(":")[0]):
        build(CorrectArgs, values, "correct")


def test_the_record_leaves_out_term_grad_norms_every():
    """A log option: the update is the same with or without it (tests/test_term_gradients.py), so a run made with
    another value is resumed or reused, not refused."""
    assert CorrectArgs(term_grad_norms_every=5).record() == CorrectArgs().record()
    assert CorrectArgs(term_grad_norms_every=-1).validate() == ["term_grad_norms_every: must be ≥ 0, got -1"]


def test_the_record_names_neutral_likelihood_only_when_it_is_on():
    """Off, the stage record is the one made before the option existed, so an older finished correction is
    still reused; on, the record says so."""
    assert "neutral_likelihood" not in CorrectArgs().record()
    assert CorrectArgs(neutral_likelihood=0.5, positive_judge="j").record()["neutral_likelihood"] == 0.5


def test_the_record_names_lr_schedule_only_when_it_is_not_constant():
    assert CorrectArgs(lr_schedule="constant").record() == CorrectArgs().record()
    assert CorrectArgs(lr_schedule="linear").record()["lr_schedule"] == "linear"


def test_each_steps_learning_rate_by_hand():
    """Warm-up, then constant (the paper's) or a linear decay to lr/(steps − warmup_steps) at the last step."""
    from lancet_ds.ibo.recipe import step_lr

    constant = [step_lr(CorrectArgs(lr=1.0, steps=6, warmup_steps=2), t) for t in range(6)]
    assert constant == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    linear = [step_lr(CorrectArgs(lr=1.0, steps=6, warmup_steps=2, lr_schedule="linear"), t) for t in range(6)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert [step_lr(CorrectArgs(lr=2e-4, steps=100, lr_schedule="linear"), t) for t in (0, 50, 99)] == \
        pytest.approx([2e-4, 1e-4, 2e-6])


def test_choices_and_the_renamed_top_k_through_the_options_contract():
    val = {"validation_queries": "val.jsonl"}
    assert build(CorrectArgs, {"top_k": "4", "method": "pbo", "patience": 1, "validate_every": 2, **val}, "").top_k == 4
    assert CorrectArgs(patience=1, validate_every=2, pareto_mass=1.0, **val).validate() == []
    with pytest.raises(ConfigError, match="validate_every: choosing a checkpoint needs validation data"):
        build(CorrectArgs, {"validate_every": 2}, "")
    assert CorrectArgs(validate_every=2, select_by="harm", **val).validate() == [
        "select_by: harm needs validation_prompts and validation_judge"]
    assert CorrectArgs(validation_prompts="p", validation_judge="j").criterion() == "harm"
    with pytest.raises(ConfigError, match=r"method: 'dpo' is not one of \['ibo', 'pbo', 'ga', 'llm_ul', 'sft_er', 'dpo_er'\]"):
        build(CorrectArgs, {"method": "dpo"}, "")
    with pytest.raises(ConfigError, match="k: unknown option"):
        build(CorrectArgs, {"k": 8}, "")
    assert CorrectArgs(cor_form="other").validate() == ["cor_form: 'other' is not one of ['dpo', 'paper']"]


SEL = Selection(positive={0: [("a", 1.0), ("b", 0.5)], 1: [("c", 0.25)], 2: [("d", 0.1)]},
                negative={0: [("e", -0.5)], 1: [("f", -1.0), ("g", -0.2)], 2: []},
                neutral=["n1", "n2", "n3"], max_abs=1.0)


def test_beta_defaults_by_method_and_an_explicit_one_wins():
    """IBO's margin temperature defaults to the paper's 1; dpo_er's β to DPO's usual 0.1; a given β is used as is."""
    assert CorrectArgs().margin_beta() == 1.0 and CorrectArgs(method="pbo").margin_beta() == 1.0
    assert CorrectArgs(method="dpo_er", corrections="q.jsonl").margin_beta() == 0.1
    assert CorrectArgs(method="dpo_er", corrections="q.jsonl", beta=1.0).margin_beta() == 1.0
    assert CorrectArgs(beta=4.0).margin_beta() == 4.0
    assert CorrectArgs(beta=0.0).validate() == ["beta: must be > 0, got 0.0"]


def test_ibo_without_pairs_says_why():
    """Scores with no negative side (TF-IDF similarities, `score --by tfidf`) cannot feed IBO at all: the refusal
    says so and names the methods that can use them; sides that only never share a batch get the selection advice."""
    similarities = Selection(positive={0: [("a", 1.0)], 1: [("b", 0.4)]}, negative={0: [], 1: []}, neutral=["n"])
    assert usable_batches(CorrectArgs(), similarities) == []
    assert usable_batches(CorrectArgs(method="pbo"), similarities) == [0, 1]
    assert "no scored sample has a negative score" in unpairable_reason(similarities)
    assert "--method pbo or ga" in unpairable_reason(similarities)
    apart = Selection(positive={0: [("a", 1.0)], 1: []}, negative={0: [], 1: [("b", -0.4)]}, neutral=["n"])
    assert usable_batches(CorrectArgs(), apart) == []
    assert unpairable_reason(apart).startswith("no query batch has both positive and negative samples")


def test_draw_is_seeded_by_step_and_pairs_stay_within_a_batch():
    args = CorrectArgs(pair_batch=16, neutral_batch=2, seed=5)
    assert usable_batches(args, SEL) == [0, 1]  # batch 2 has no D⁻: IBO cannot pair it
    assert usable_batches(CorrectArgs(method="pbo"), SEL) == [0, 1, 2]
    pairs, neutral = draw(3, args, SEL, SEL.neutral)
    assert (pairs, neutral) == draw(3, args, SEL, SEL.neutral) and (pairs, neutral) != draw(4, args, SEL, SEL.neutral)
    batch_of = {i: b for side in (SEL.positive, SEL.negative) for b, m in side.items() for i, _ in m}
    assert all(batch_of[p[0]] == batch_of[n[0]] for p, n in pairs)
    assert len(neutral) == 2 and set(neutral) <= set(SEL.neutral)
    pbo_pairs, _ = draw(0, CorrectArgs(method="pbo", pair_batch=64), SEL, SEL.neutral)
    assert ("d", 0.1) in [p for p, _ in pbo_pairs] and (None, 0.0) in [n for _, n in pbo_pairs]
    fixes, replay = draw(2, CorrectArgs(method="dpo_er", corrections="q.jsonl", pair_batch=4), SEL, ["r1"], ["q1", "q2"])
    assert all(c[0][:2] == u[0][:2] and c[0].endswith("#corrected") and u[0].endswith("#undesirable")
               for c, u in fixes) and replay == ["r1"]


def test_human_correction_baselines_need_the_corrections(tmp_path):
    from lancet_ds.ibo.recipe import correction_samples
    from lancet_ds.errors import ConfigError

    assert any("corrections: method sft_er" in p for p in CorrectArgs(method="sft_er").validate())
    good = tmp_path / "q.jsonl"
    good.write_text('{"id": "q1", "prompt": "p", "response": "bad", "corrected_response": "good"}\n')
    assert [(s.id, s.response) for s in correction_samples(str(good))] == [("q1#corrected", "good"),
                                                                          ("q1#undesirable", "bad")]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "q1", "prompt": "p", "response": "bad"}\n')
    with pytest.raises(ConfigError, match=r"b.jsonl:1: no corrected_response"):
        correction_samples(str(bad))


class TinyLM(torch.nn.Module):
    """logits = an embedding of the current token: enough for a causal LM's interface."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.emb(input_ids))

    def response_logprobs(self, s: EncodedSample) -> torch.Tensor:
        """log p of each response token of `s`, one sample at a time (the hand computation)."""
        ids = torch.tensor(s.input_ids)
        lp = torch.log_softmax(self.emb(ids[:-1]), -1).gather(1, ids[1:, None])[:, 0]
        return lp[torch.tensor(s.loss_mask[1:]).bool()]


ENC = {i: EncodedSample(i, ids, mask) for i, ids, mask in [
    ("a", [1, 2, 3, 4], [0, 0, 1, 1]), ("b", [5, 6, 7], [0, 1, 1]), ("e", [2, 9, 9, 1, 3], [0, 0, 0, 1, 1]),
    ("n1", [4, 4, 8], [0, 1, 1]), ("n2", [7, 3, 2, 1], [0, 1, 1, 1]),
    ("a#mismatch", [1, 2, 8, 9], [0, 0, 1, 1]), ("b#mismatch", [5, 6, 3], [0, 1, 1])]}


@pytest.mark.parametrize("method", ["ibo", "pbo", "ga", "llm_ul", "sft_er", "dpo_er"])
def test_step_loss_is_the_objective_of_the_drawn_samples(method):
    model = TinyLM()
    with torch.no_grad():
        ref = {i: model.response_logprobs(s) - 0.1 * (k + 1) for k, (i, s) in enumerate(ENC.items())}
    pairs = [(("a", 1.0), ("e", -0.5)), (("b", 0.5), ("e", -0.5))]
    args = CorrectArgs(method=method, epsilon=-1.0)
    loss, terms = step_loss(model, args, pairs, ["n1", "n2"], ENC, ref, pad_id=0)
    pol = {i: model.response_logprobs(s).detach().requires_grad_() for i, s in ENC.items()}  # leaves: pulls by hand
    r = {i: log_ratio(pol[i], ref[i]) for i in pol}
    rv = {i: float(v.detach()) for i, v in r.items()}
    l_cor = correction_loss(torch.stack([r["a"], r["b"]]), torch.stack([r["e"], r["e"]]), torch.tensor([1.0, 0.5]),
                            torch.tensor([-0.5, -0.5]))
    neu, neu_ref = torch.cat([pol["n1"], pol["n2"]]), torch.cat([ref["n1"], ref["n2"]])
    l_bd = bregman_loss(neu, neu_ref, torch.ones(len(neu)))
    pos = torch.cat([pol["a"], pol["b"]])
    nll_pos = nll(pos, torch.ones_like(pos))
    nll_replay = nll(neu, torch.ones_like(neu))
    mis = torch.cat([pol["a#mismatch"], pol["b#mismatch"]])
    nll_mis = nll(mis, torch.ones_like(mis))
    # DPO by hand: −mean log σ(β(r(chosen) − r(rejected))), β = 0.1 (dpo_er's default: DPO's usual value)
    dpo = -sum(math.log(1 / (1 + math.exp(-0.1 * (rv[c] - rv["e"])))) for c in ("a", "b")) / 2
    expected = {"ibo": {"L_COR": l_cor, "L_BD": l_bd, "NLL_pos": 0.0},
                "pbo": {"L_COR": 0.0, "L_BD": l_bd, "NLL_pos": nll_pos},
                "ga": {"L_COR": 0.0, "L_BD": 0.0, "NLL_pos": nll_pos},
                "llm_ul": {"L_COR": 0.0, "L_BD": l_bd, "NLL_pos": nll_pos, "NLL_mismatch": nll_mis},
                "sft_er": {"L_COR": 0.0, "L_BD": 0.0, "NLL_pos": nll_pos, "NLL_replay": nll_replay},
                "dpo_er": {"L_COR": dpo, "L_BD": 0.0, "NLL_pos": 0.0, "NLL_replay": nll_replay}}[method]
    assert {k: terms[k] for k in expected} == pytest.approx(
        {k: float(torch.as_tensor(v).detach()) for k, v in expected.items()}, rel=1e-6)
    if method == "ibo":  # the pair margins u = Ĩ⁺ r⁺ + Ĩ⁻ r⁻ (Eq. 15) and their saturation, by hand
        u = [1.0 * rv["a"] - 0.5 * rv["e"], 0.5 * rv["b"] - 0.5 * rv["e"]]
        assert terms["u_mean"] == pytest.approx(sum(u) / 2, rel=1e-6)
        assert (terms["u_min"], terms["u_max"]) == pytest.approx((min(u), max(u)), rel=1e-6)
        lo, hi = sorted(u)  # the quantiles of two margins: linear between them
        assert (terms["u_p10"], terms["u_p50"], terms["u_p90"]) == pytest.approx(
            (lo + 0.1 * (hi - lo), (lo + hi) / 2, lo + 0.9 * (hi - lo)), rel=1e-6)
        assert terms["saturated_share"] == sum(1 / (1 + math.exp(-x)) < 0.01 for x in u) / 2
    dpo_t = dpo_loss(torch.stack([r["a"], r["b"]]), torch.stack([r["e"], r["e"]]), 0.1)
    parts = {"ibo": {"L_COR": l_cor, "L_BD": l_bd}, "pbo": {"L_BD": l_bd, "NLL_pos": -nll_pos},
             "ga": {"NLL_pos": -nll_pos},
             "llm_ul": {"NLL_pos": -0.5 * nll_pos, "NLL_mismatch": nll_mis, "L_BD": l_bd},
             "sft_er": {"NLL_pos": nll_pos, "NLL_replay": nll_replay},
             "dpo_er": {"L_COR": dpo_t, "NLL_replay": nll_replay}}[method]
    # each term's pull: the norm of its part's gradient over every response token's log-prob, by autograd
    # on the per-sample leaves (the recipe differentiates the batch's log-prob matrix instead)
    pulls = {f"pull_{name}": math.sqrt(sum(float(g.pow(2).sum()) for g in torch.autograd.grad(
        part, list(pol.values()), retain_graph=True, allow_unused=True) if g is not None))
        for name, part in parts.items()}
    assert {k: v for k, v in terms.items() if k.startswith("pull_")} == pytest.approx(pulls, rel=1e-5)
    assert all(v > 0 for v in pulls.values())
    # `term`: the loss is that term's part alone (what `ibo.term_gradients` differentiates), for each of the method's
    assert method_terms(method) == [name for name in TERMS if name in parts]
    for name, part in parts.items():
        alone, logged = step_loss(model, args, pairs, ["n1", "n2"], ENC, ref, pad_id=0, term=name)
        assert alone.item() == pytest.approx(float(part.detach()), rel=1e-6) and logged == {}
    if method != "ibo":
        assert set(terms) == set(expected) | set(pulls)
    total = {"ibo": l_bd + l_cor, "pbo": l_bd - nll_pos, "ga": -nll_pos, "llm_ul": -0.5 * nll_pos + nll_mis + l_bd,
             "sft_er": nll_pos + nll_replay,
             "dpo_er": dpo + nll_replay}[method]
    assert loss.item() == pytest.approx(float(total.detach()), rel=1e-6)  # world size 1: no scaling
    loss.backward()
    assert model.emb.weight.grad.abs().sum() > 0


def test_neutral_likelihood_adds_the_nll_of_the_judge_passed_neutral_samples():
    """ibo with `neutral_likelihood` μ: loss = L_BD + L_COR + μ·NLL(drawn neutral samples in `likely`), by hand;
    n1 is drawn but not passed (the judge flags it), so L_BD holds it and the NLL does not touch it."""
    model = TinyLM()
    with torch.no_grad():
        ref = {i: model.response_logprobs(s) - 0.1 * (k + 1) for k, (i, s) in enumerate(ENC.items())}
    pairs = [(("a", 1.0), ("e", -0.5))]
    args = CorrectArgs(neutral_likelihood=2.0, positive_judge="judge")
    loss, terms = step_loss(model, args, pairs, ["n1", "n2"], ENC, ref, pad_id=0, likely=frozenset({"n2"}))
    pol = {i: model.response_logprobs(s).detach().requires_grad_() for i, s in ENC.items()}
    l_cor = correction_loss(log_ratio(pol["a"], ref["a"])[None], log_ratio(pol["e"], ref["e"])[None],
                            torch.tensor([1.0]), torch.tensor([-0.5]))
    neu = torch.cat([pol["n1"], pol["n2"]])
    l_bd = bregman_loss(neu, torch.cat([ref["n1"], ref["n2"]]), torch.ones(len(neu)))
    liked = nll(pol["n2"], torch.ones_like(pol["n2"]))
    assert terms["NLL_replay"] == pytest.approx(liked.item(), rel=1e-6)
    assert loss.item() == pytest.approx((l_bd + l_cor + 2.0 * liked).item(), rel=1e-6)
    (grad,) = torch.autograd.grad(2.0 * liked, [pol["n2"]])
    assert terms["pull_NLL_replay"] == pytest.approx(float(grad.norm()), rel=1e-5)
    _, off = step_loss(model, CorrectArgs(), pairs, ["n1", "n2"], ENC, ref, pad_id=0, likely=frozenset({"n2"}))
    assert "NLL_replay" not in off and "pull_NLL_replay" not in off  # μ = 0: the paper's objective, unchanged
    # a step (or a rank) that draws no passed sample: the term is 0 but stays on the graph, so every rank logs
    # the same terms and makes the same reductions
    none_loss, none = step_loss(model, args, pairs, ["n1"], ENC, ref, pad_id=0, likely=frozenset({"n2"}))
    assert none["NLL_replay"] == 0.0 and none["pull_NLL_replay"] == 0.0
    l_bd1 = bregman_loss(pol["n1"], ref["n1"], torch.ones(len(pol["n1"])))
    assert none_loss.item() == pytest.approx((l_bd1 + l_cor).item(), rel=1e-6)
    none_loss.backward()


def test_step_loss_at_the_reference_is_log_two_and_zero_divergence():
    model = TinyLM()
    with torch.no_grad():
        ref = {i: model.response_logprobs(s) for i, s in ENC.items()}
    _, terms = step_loss(model, CorrectArgs(), [(("a", 1.0), ("e", -0.5))], ["n1"], ENC, ref, pad_id=0)
    assert terms["L_COR"] == pytest.approx(math.log(2), rel=1e-6) and terms["L_BD"] == pytest.approx(0.0, abs=1e-6)


def test_a_save_on_fewer_ranks_leaves_no_partition_of_the_old_world(tmp_path):
    """A tag saved on 2 ranks, then again on 1 (a correction resumed on fewer ranks): DeepSpeed leaves rank 1's
    files behind; `drop_other_partitions` removes them so the folder reads as written by 1 rank."""
    from lancet_ds.checkpoint_io import drop_other_partitions, saved_world_size

    for rank in (0, 1):
        for name in (f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"):
            (tmp_path / name).write_bytes(b"x")
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert saved_world_size(tmp_path) == 2
    drop_other_partitions(tmp_path, 1)
    assert saved_world_size(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                          "mp_rank_00_model_states.pt",
                                                          "zero_pp_rank_0_mp_rank_00_model_states.pt"]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_the_replay_pool_is_read_under_the_corpus_bad_record_policy(tmp_path, policy):
    """`correct` reads the corpus again for its replay samples: a bad record there stops it under `fail`
    (before any post-training) and is set aside in correct/rejects.jsonl under `skip`."""
    import json

    from lancet_ds.data.spec import DataSpec
    from lancet_ds.errors import BadRecordError
    from lancet_ds.ibo.recipe import training_sets
    from lancet_ds.run_dir import RunDir

    run = RunDir.of(tmp_path / "run")
    run.score_rows.parent.mkdir(parents=True)
    run.batches.parent.mkdir(parents=True)
    run.score_rows.write_text("".join(json.dumps({"id": i, "score_0": s}) + "\n" for i, s in (("a", 1.0), ("b", -1.0))))
    run.batches.write_text(json.dumps({"batches": [[0]]}))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "c", "prompt": "p"}\n'
                      '{"id": "d", "prompt": "p", "response": "r"}\n')
    spec = DataSpec(path=str(corpus), on_bad_record=policy)
    if policy == "fail":
        with pytest.raises(BadRecordError, match=rf"{corpus}:2: missing field 'response'"):
            training_sets(run, CorrectArgs(top_k=1, replay=4), spec)
        return
    _, _, replay, _ = training_sets(run, CorrectArgs(top_k=1, replay=4), spec)
    assert [s.id for s in replay] == ["d"]  # a is scored, c is bad
    rejects = [json.loads(line) for line in (run.correct / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{corpus}:2"]


@pytest.mark.parametrize("method", ["ibo", "pbo", "ga", "llm_ul", "sft_er", "dpo_er"])
def test_the_terms_parts_carry_their_weights_and_add_up_to_the_objective(method):
    from lancet_ds.ibo.objective import objective
    from lancet_ds.ibo.step import term_part

    values = tuple(torch.tensor(v) for v in (0.3, 0.2, 0.7, 0.5, 0.11))
    weights = {"bd_weight": 3.0, "likelihood_weight": 2.0 if method == "ibo" else 0.0}
    names = method_terms(method, **weights)
    parts = {name: float(term_part(method, values, name, **weights)) for name in names}
    assert sum(parts.values()) == pytest.approx(float(objective(method, *values, **weights)))
    if method == "ibo":
        assert parts == pytest.approx({"L_COR": 0.3, "L_BD": 0.6, "NLL_replay": 1.0})
    if method == "pbo":
        assert parts == pytest.approx({"L_BD": 0.6, "NLL_pos": -0.7})
