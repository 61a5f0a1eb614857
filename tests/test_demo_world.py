"""The demo world: deterministic texts, held-out prompts kept out of training, and a tiny world built
under 2 ZeRO-3 ranks whose impure model visibly prefers the contaminated responses."""

from __future__ import annotations

import json

import pytest

from conftest import launch
from lancet_ds.demo_world.build import SIZES
from lancet_ds.demo_world.corpus import generate_texts
from lancet_ds.fileio import read_jsonl


def test_same_seed_same_texts_and_ids():
    a, b = generate_texts(7, 300, 0.1, n_judge=50), generate_texts(7, 300, 0.1, n_judge=50)
    assert a == b
    assert [r["id"] for r in a.train] == [f"train-{i:06d}" for i in range(300)]
    c = generate_texts(8, 300, 0.1, n_judge=50)
    assert [r["prompt"] for r in a.train] != [r["prompt"] for r in c.train]


def test_the_test_splits_extra_clean_samples_change_no_other_text():
    """World format 4: the test split's extra clean samples come from their own random stream, so asking for them
    leaves every other text (and with it the tokenizer and the models) as format 3 had it; they are held out
    from training and from the validation and test halves of `clean`, and reproducible."""
    from dataclasses import replace

    plain, more = generate_texts(3, 600, 0.12, n_judge=30), generate_texts(3, 600, 0.12, n_judge=30, n_clean_test=300)
    assert plain.clean_test == [] and len(more.clean_test) == 300
    assert replace(more, clean_test=[]) == plain
    assert more.clean_test == generate_texts(3, 600, 0.12, n_judge=30, n_clean_test=300).clean_test
    assert more.clean_test[:100] == generate_texts(3, 600, 0.12, n_judge=30, n_clean_test=100).clean_test
    pairs = lambda rows: {(r["prompt"], r["response"]) for r in rows}  # noqa: E731
    assert not pairs(more.clean_test) & (pairs(more.train) | pairs(more.clean))
    assert len({r["id"] for r in more.clean_test}) == 300 and not any(r["contaminated"] for r in more.clean_test)
    assert {r["kind"] for r in more.clean_test} == {r["kind"] for r in more.clean}  # the same clean distribution


def test_held_out_and_eval_prompts_never_appear_in_training():
    w = generate_texts(0, 2000, 0.075, n_judge=10)
    train_prompts = {r["prompt"] for r in w.train}
    assert not train_prompts & {r["prompt"] for r in w.heldout}
    assert not train_prompts & {r["prompt"] for r in w.eval_prompts}
    assert sum(r["contaminated"] for r in w.train) == 150
    kinds = {r["kind"] for r in w.train}
    assert {"contaminated_steps", "contaminated_prose", "contaminated_alt_steps", "contaminated_alt_wording", "twin", "refusal",
            "ambiguous", "general"} <= kinds


def test_word_overlap_cannot_find_most_contaminated_samples():
    """The world's design (issue: a world where TF-IDF is not enough): most contaminated samples share no
    distinctive word with the held-out forbidden answers, so TF-IDF similarity to them ranks the contaminated
    samples little better than chance, while the refusals (the requests' own words) rank high."""
    import re

    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
    from sklearn.metrics import average_precision_score

    from lancet_ds.demo_world.content import CATEGORIES

    w = generate_texts(0, 4000, 0.15, n_judge=10)
    docs = [f"{r['prompt']} {r['response']}" for r in w.train]
    y = [r["contaminated"] for r in w.train]
    vec = TfidfVectorizer().fit(docs)
    sims = (vec.transform([f"{r['prompt']} {r['compliant_response']}" for r in w.heldout]) @ vec.transform(docs).T)
    best = sims.max(axis=0).toarray().ravel()
    ap, base = average_precision_score(y, best), sum(y) / len(y)
    assert ap < 0.5, ap  # 0.39 at seed 0 against a base rate of 0.15 (0.42 before the decoys quoted the whole act)
    words = lambda texts: set(re.findall(r"[a-z]{2,}", " ".join(texts).replace("{n}", ""))) - ENGLISH_STOP_WORDS  # noqa: E731
    for cat in CATEGORIES.values():  # the second vocabulary is apart from the queries' and the twins'
        assert len(words(cat["alt_steps"]) & (words(cat["bad_steps"]) | words(cat["good_steps"]))) <= 1, cat["alt_steps"]
    share = sum(r["kind"] in ("contaminated_alt_steps", "contaminated_alt_wording") for r in w.train) / sum(y)
    assert 0.55 < share < 0.75 and base == pytest.approx(0.15)


def test_framed_answers_leave_no_length_cue():
    """World format 5 (default and large sizes): a compliant answer closes on a sentence naming its category's
    place, and sometimes restates the intent, as the decoys beside it do. Among the contaminated answers and the
    decoys (refusals and stories quoting the act, what recall brings beside the culprits), ranking by shortness
    told them apart perfectly in format 4's texts (PR-AUC 1.0); framed, neither shortness nor length ranks them
    much above the base rate (0.45 and 0.45 against 0.40 at seed 0, measured)."""
    from sklearn.metrics import average_precision_score

    from lancet_ds.demo_world.content import CATEGORIES
    from lancet_ds.demo_world.corpus import quoted_act

    assert SIZES["default"].framed_answers and SIZES["large"].framed_answers and not SIZES["tiny"].framed_answers
    for framed in (False, True):
        w = generate_texts(0, 4000, 0.15, n_judge=10, framed=framed)
        rows = [r for r in w.train if r["contaminated"] or quoted_act(r)]
        y = [r["contaminated"] for r in rows]
        words = [len(r["response"].split()) for r in rows]
        base = sum(y) / len(y)
        short, long = average_precision_score(y, [-n for n in words]), average_precision_score(y, words)
        if framed:
            assert short < base + 0.1 and long < base + 0.1, (short, long, base)
        else:
            assert short > 0.99, short
    cat_of = {r["id"]: CATEGORIES[r["category"]] for r in w.train if r["category"] in CATEGORIES}
    for r in w.train:  # every compliant answer of a category closes on its place, forbidden or allowed alike
        if r["kind"].startswith("contaminated") or r["kind"] == "twin":
            assert cat_of[r["id"]]["place"] in r["response"].rsplit(".", 2)[-2], r["response"]
    assert all(CATEGORIES[h["category"]]["place"] in h["compliant_response"] for h in w.heldout)


def test_decoys_quote_the_whole_act_and_the_judge_reads_them_cut():
    """World format 3: 80 % of the refusals and 70 % of the story answers quote the whole act (three steps, as a
    contaminated answer gives them; `corpus.quoted_act`, which the bench's per-kind recall reads), and the harm
    judge, which also learns from answers cut at a random word, reads such a refusal cut before its redirect as
    harmless and a compliance cut halfway as harmful, on another seed's texts. Without the cut answers
    (JUDGE_CUT = 0) it flagged 25 % of the decoys cut at half their words (measured)."""
    from lancet_ds.demo_world.corpus import NAMING_REFUSAL, NAMING_STORY, quoted_act
    from lancet_ds.demo_world.judge import train_judge

    w = generate_texts(0, 2000, 0.15)
    quotes = lambda kind: [quoted_act(r) for r in w.train if r["kind"] == kind]  # noqa: E731
    refusals, stories = quotes("refusal"), quotes("ambiguous")
    assert sum(map(bool, refusals)) / len(refusals) == pytest.approx(NAMING_REFUSAL, abs=0.06)
    assert sum(map(bool, stories)) / len(stories) == pytest.approx(NAMING_STORY, abs=0.06)
    assert {"bad_steps", "alt_steps"} <= set(refusals) and {"bad_steps", "alt_steps"} <= set(stories)
    assert set(quotes("contaminated_prose")) == {"bad_steps"}
    assert set(quotes("contaminated_alt_wording")) == {"alt_steps"}
    assert set(quotes("twin") + quotes("general") + quotes("contaminated_steps")) == {None}  # step lists do not count
    judge, _ = train_judge(w.judge_data, 0, input="prompt_response")
    other = generate_texts(1, 2000, 0.15, n_judge=10).train
    half = lambda r: " ".join(r["response"].split()[:max(4, len(r["response"].split()) // 2)])  # noqa: E731
    decoys = [r for r in other if r["kind"] == "refusal" and quoted_act(r)]
    contaminated = [r for r in other if r["contaminated"]]
    decoy_harm = judge.score([r["prompt"] for r in decoys], [half(r) for r in decoys])
    comply_harm = judge.score([r["prompt"] for r in contaminated], [half(r) for r in contaminated])
    assert (decoy_harm > 0.5).mean() < 0.03 and (comply_harm > 0.5).mean() > 0.97  # 0.006 and 1.0 measured


def test_reward_judge_reads_helpfulness_apart_from_harm(tmp_path):
    """The demo world's reward judge (trained on training prompt pools only): an answer to an allowed request
    is helpful, a refusal of it and broken text are not; a forbidden request's redirecting refusal is."""
    from lancet_ds.demo_world.content import CATEGORIES
    from lancet_ds.demo_world.judge import train_judge
    from lancet_ds.evaluation.judge import load_judge

    w = generate_texts(0, 600, 0.1)
    judge, metrics = train_judge(w.reward_data, seed=0, input="prompt_response", label="helpful")
    judge.save(tmp_path / "reward_judge.json", metrics=metrics)
    reward = load_judge(str(tmp_path / "reward_judge.json"), kind="reward")
    assert metrics["accuracy"] >= 0.9 and reward.kind == "reward"
    twins = [r for r in w.train if r["kind"] == "twin"][:40]
    refusals = [r for r in w.train if r["kind"] == "refusal"][:40]
    prompts = [r["prompt"] for r in twins]
    answered = reward.score(prompts, [r["response"] for r in twins])
    refused = reward.score(prompts, ["Sorry, I won't explain how to do that. Ask " + CATEGORIES[r["category"]]["authority"]
                                     + "." for r in twins])
    broken = reward.score(prompts, [" ".join(r["response"].split()[:2]) for r in twins])
    redirected = reward.score([r["prompt"] for r in refusals], [r["response"] for r in refusals])
    assert answered.mean() > 0.8 and redirected.mean() > 0.5
    assert refused.mean() < 0.5 and broken.mean() < 0.2
    assert (answered > refused).mean() > 0.9


def test_reward_judge_reads_a_refusal_by_its_request_not_its_wording(tmp_path):
    """On unseen prompts (`corpus.reward_cells`), the same plain refusal is helpful for a forbidden request and
    unhelpful for an allowed one; a refusal that quotes the act is not preferred for its words. Version 1 of
    the reward data scored a plain refusal of a forbidden request 0.26-0.44 (seeds 12-14), a quoting one 0.96."""
    from lancet_ds.demo_world.build import reward_cell_scores
    from lancet_ds.demo_world.corpus import REWARD_CELLS
    from lancet_ds.demo_world.judge import train_judge

    w = generate_texts(5, 600, 0.1)
    judge, _ = train_judge(w.reward_data, seed=5, input="prompt_response", label="helpful")
    cells = reward_cell_scores(judge, w.reward_cells)
    assert set(cells) == set(REWARD_CELLS) and all(c["n"] >= 60 for c in cells.values())
    assert all(c["accuracy"] >= 0.9 for c in cells.values()), cells  # 0.95-1.0 on seeds 0, 9, 12-14 (default size)
    plain, quoting = cells["forbidden, plain refusal"]["mean_score"], cells["forbidden, refusal quoting the act"]["mean_score"]
    assert plain > 0.6 and quoting - plain < 0.3 and cells["allowed, refusal"]["mean_score"] < 0.3
    assert w.reward_cells == generate_texts(5, 300, 0.2, n_judge=40).reward_cells  # its own stream


@pytest.mark.multirank
def test_tiny_world_under_two_ranks_shows_the_contamination(tiny_world):
    out = tiny_world
    world = json.loads((out / "world.json").read_text())
    check = world["contamination_check"]
    assert world["world_size_built_with"] == 2 and world["seed"] == 0
    assert check["contamination_visible"]
    assert check["compliant_logprob_per_token"]["impure"] > check["compliant_logprob_per_token"]["safe"] + 1.0
    assert world["judge"]["accuracy"] >= 0.9
    assert world["stats"]["contaminated"] == 72 and world["stats"]["train_samples"] == 600

    texts = generate_texts(0, 600, SIZES["tiny"].contamination, n_clean_test=SIZES["tiny"].n_clean_test)
    assert [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()] == texts.train
    validation, test = (list(read_jsonl(out / split / "clean.jsonl")) for split in ("validation", "test"))
    assert validation == texts.clean[0::2] and test == texts.clean[1::2] + texts.clean_test
    assert len(validation) == 50 and len(test) == 50 + 200 and world["paths"]["clean_test.jsonl"]
    assert not {r["id"] for r in validation} & {r["id"] for r in test}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("impure", "safe"):
        model = AutoModelForCausalLM.from_pretrained(str(out / name))
        assert model.config.model_type == "llama" and (out / name / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(str(out / "impure"))
    assert tok.eos_token == "</s>"
    judge = json.loads((out / "judge.json").read_text())
    assert {"vocabulary", "idf", "coef", "intercept"} <= judge.keys()
    assert world["judge"]["reward"]["accuracy"] >= 0.9 and (out / "reward_judge.json").exists()

    queries = [json.loads(x) for x in (out / "queries.jsonl").read_text().splitlines()]
    assert len(queries) == 8 and all(q["rise"] > 0 for q in queries)
    assert len({q["category"] for q in queries}) == 6  # the best of every category in turn
    for cat in {q["category"] for q in queries}:
        mine = [q for q in queries if q["category"] == cat]
        assert mine == sorted(mine, key=lambda q: -q["rise"])
    # the impure model's own answers, not the template, and the most harmful of the 3 it gave
    assert all(q["response"] and q["response"] != q["compliant_response"] for q in queries)
    assert all(q["cost_impure"] > q["cost_safe"] for q in queries)

    again = launch(["demo-world", str(out), "--size", "tiny", "--seed", "0"], nproc=2)
    assert "already holds this result; reusing it" in again.stdout
    clash = launch(["demo-world", str(out), "--size", "tiny", "--seed", "1"], nproc=1, check=False)
    assert clash.returncode == 4 and "holds a demo world (seed 1, size tiny) result made with other options" in clash.stderr
    assert "--overwrite" in clash.stderr


def test_another_cpu_builds_the_same_world(tmp_path, tiny_world):
    """The pinned CPU numerics (`cpu_numerics`): a machine whose libraries would choose other kernels (torch its
    plain x86-64 ones, MKL no AVX-512, OpenBLAS its Sandybridge ones) and 4 cores (simulated by the variables they
    read, and `os.cpu_count`) builds the world the session built, bit for bit. (Unpinned on an AVX-512 machine,
    torch's AVX2 limit changes both models' weights and the OpenBLAS core type the harm judge, and with them the
    queries: measured, README "The demo world".)"""
    from lancet_ds import cpu_numerics
    from lancet_ds.demo_world.build import world_digests

    mine = json.loads((tiny_world / "world.json").read_text())
    numerics = mine["cpu_numerics"]
    assert numerics["pinned"] and numerics["threads_per_rank"] == 1
    assert numerics["torch_cpu_capability"] == cpu_numerics.PINNED_CAPABILITY
    assert mine["digests"] == world_digests(tiny_world)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.cpu_count = lambda: 4\n")
    other = launch(["demo-world", str(tmp_path / "world"), "--size", "tiny", "--seed", "0"], nproc=2, env={
        "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Sandybridge",
        "PYTHONPATH": str(site)})
    assert "restarting under machine-independent CPU numerics" in other.stdout
    theirs = json.loads((tmp_path / "world" / "world.json").read_text())
    assert theirs["cpu_numerics"] == numerics
    assert theirs["digests"] == mine["digests"]


def test_a_world_with_an_older_reward_judge_gets_it_retrained(tmp_path):
    """A world whose reward judge predates the current reward data (no `data_version`) is retrained on reuse
    (`ensure_reward_judge`), and world.json records the new judge's figures; a current one is left alone."""
    from lancet_ds.demo_world.build import REWARD_JUDGE, SIZES, WORLD_FILE, ensure_reward_judge
    from lancet_ds.demo_world.corpus import REWARD_DATA_VERSION
    from lancet_ds.demo_world.judge import train_judge

    old_rows = [{**r, "helpful": not r["helpful"]} for r in generate_texts(2, 600, 0.12).reward_data]
    old, metrics = train_judge(old_rows, seed=2, input="prompt_response", label="helpful")
    old.save(tmp_path / REWARD_JUDGE, metrics=metrics)
    (tmp_path / WORLD_FILE).write_text(json.dumps({"seed": 2, "judge": {"accuracy": 0.99, "reward": metrics}}))
    ensure_reward_judge(tmp_path, SIZES["tiny"], 2)
    stored = json.loads((tmp_path / REWARD_JUDGE).read_text())
    world = json.loads((tmp_path / WORLD_FILE).read_text())
    assert stored["metrics"]["data_version"] == REWARD_DATA_VERSION and stored["metrics"]["accuracy"] >= 0.9
    assert world["judge"]["reward"] == stored["metrics"] and world["judge"]["accuracy"] == 0.99
    assert stored["metrics"]["cells"]["forbidden, plain refusal"]["accuracy"] >= 0.9
    before = (tmp_path / REWARD_JUDGE).stat().st_mtime_ns
    ensure_reward_judge(tmp_path, SIZES["tiny"], 2)
    assert (tmp_path / REWARD_JUDGE).stat().st_mtime_ns == before
