"""cbmir.analyses.classify against slow, obviously correct loops on small seeded data."""

import numpy as np
import pytest
from cbmir.analyses import classify
from cbmir.classification import classification_metrics
from cbmir.probe import train_linear_probe
from classify_data import cos, knn_data, ref_neighbours, ref_vote


def test_grouped_folds_never_split_a_case():
    x, labels, splits, cases = knn_data()
    y = np.unique(labels, return_inverse=True)[1]
    folds = classify.grouped_folds(y, cases, n_splits=4, seed=3)
    held = np.concatenate(folds)
    assert sorted(held.tolist()) == list(range(len(y)))  # every row held out exactly once
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(y)), fold)
        assert not set(cases[fold]) & set(cases[rest])


def test_grouped_folds_with_classes_smaller_than_the_fold_count():
    # every class has 3 images (3 cases): 5 folds are impossible, so K falls to 3 and no case is split
    y = np.repeat(np.arange(4), 3)
    cases = np.arange(12)
    folds = classify.grouped_folds(y, cases, n_splits=5, seed=0)
    assert len(folds) == 3
    assert sorted(np.concatenate(folds).tolist()) == list(range(12))


def test_grouped_cv_k_matches_a_brute_force_loop():
    x, labels, splits, cases = knn_data(seed=2)
    tr = splits == "train"
    xt, yt, ct = x[tr], np.unique(labels, return_inverse=True)[1][tr], cases[tr]
    curve, folds = classify.grouped_cv_curve(xt, yt, ct, 3, k_max=12, n_splits=4, seed=5)
    ks = list(range(1, 13))
    assert curve["k"].tolist() == ks
    for k in ks:
        correct = 0
        for fold in folds:
            rest = [j for j in range(len(yt)) if j not in set(fold.tolist())]
            for i in fold:
                order = sorted(rest, key=lambda j, i=i: -cos(xt[j], xt[i]))
                correct += ref_vote([yt[j] for j in order[:k]]) == yt[i]
        assert curve.loc[curve["k"] == k, "f1_micro"].item() == pytest.approx(correct / len(yt))
    out = classify.knn_classify(
        x, labels, splits, cases, selection="grouped-cv", k_max=12, n_splits=4, seed=5
    )
    best = max(ks, key=lambda k: (curve.loc[curve["k"] == k, "f1_micro"].item(), -k))
    assert out.rule == "grouped-cv" and out.setting["k"] == best


def test_val_rule_and_test_scores_match_a_loop_with_same_case_exclusion():
    x, labels, splits, cases = knn_data(seed=4)
    cases = cases.copy()
    cases[np.flatnonzero(splits == "test")[:3]] = cases[
        np.flatnonzero(splits == "train")[0]
    ]  # leaked patient
    classes, y = np.unique(labels, return_inverse=True)
    out = classify.knn_classify(x, labels, splits, cases, selection="val", k_max=8)
    tr, va, te = (np.flatnonzero(splits == s) for s in ("train", "val", "test"))
    f1 = []
    for k in range(1, 9):
        nb = ref_neighbours(x[tr], x[va], k, cases[tr], cases[va])
        f1.append(np.mean([ref_vote(list(y[tr][row])) == y[va][i] for i, row in enumerate(nb)]))
    k = int(np.argmax(f1)) + 1
    assert out.setting["k"] == k and np.allclose(out.curve["f1_micro"], f1)
    nb = ref_neighbours(x[tr], x[te], k, cases[tr], cases[te])
    ref = np.array([[np.mean(y[tr][row] == c) for c in range(len(classes))] for row in nb])
    assert np.allclose(out.test_scores, ref)
    expected = classification_metrics(y[te], ref, classes).metrics
    assert list(out.result.metrics) == list(expected)
    np.testing.assert_allclose(
        list(out.result.metrics.values()), list(expected.values()), rtol=1e-12, atol=1e-12
    )


def test_auto_rule_needs_two_val_cases_per_test_class():
    labels = np.array(["a", "a", "b", "b", "a", "a", "b", "b", "a", "b"])
    splits = np.array(["val", "val", "val", "val", "test", "test", "test", "test", "train", "train"])
    cases = np.array(["v1", "v2", "v3", "v4", "t1", "t2", "t3", "t4", "r1", "r2"])
    assert classify.choose_rule("auto", labels, splits, cases)[0] == "val"
    one_case = cases.copy()
    one_case[1] = "v1"  # class a now has 2 val images but 1 val case
    rule, reason = classify.choose_rule("auto", labels, splits, one_case)
    assert rule == "grouped-cv" and "1 of 2 test classes" in reason and "a: 1" in reason
    assert classify.choose_rule("val", labels, splits, one_case)[0] == "val"
    with pytest.raises(classify.ClassifyError, match="selection"):
        classify.choose_rule("best", labels, splits, cases)
    absent = classify.absent_classes(np.append(labels, "c"), np.append(splits, "train"))
    assert absent == {"val": ["c"], "test": ["c"]}


def test_standardiser_matches_a_loop_and_ignores_test_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)) * [1, 5, 0, 2] + [0, 3, 7, -1]
    mean, scale = classify.fit_standardiser(x)
    for j in range(4):
        col = [x[i, j] for i in range(20)]
        m = sum(col) / 20
        sd = (sum((v - m) ** 2 for v in col) / 20) ** 0.5
        assert mean[j] == pytest.approx(m) and scale[j] == pytest.approx(sd if sd > 0 else 1.0)
    assert np.allclose(classify.standardise(x, mean, scale)[:, [0, 1, 3]].std(axis=0), 1, atol=1e-5)

    xs, labels, splits, cases = knn_data(seed=6)
    kw = dict(selection="grouped-cv", max_epochs=15, patience=5, progress=False, seed=1)
    base = classify.probe_classify(xs, labels, splits, cases, **kw)
    # extra test rows with wild values change nothing for the original test rows (the scaler sees train only)
    wild = xs[splits == "test"][:4] * 1000 + 50
    more = classify.probe_classify(
        np.vstack([xs, wild]), np.append(labels, labels[splits == "test"][:4]),
        np.append(splits, ["test"] * 4), np.append(cases, ["w1", "w2", "w3", "w4"]), **kw,
    )  # fmt: skip
    assert np.allclose(more.test_scores[: len(base.test_scores)], base.test_scores, atol=1e-6)
    # standardised features make the probe invariant to a per-feature affine change of all rows
    scaled = classify.probe_classify(xs * [3, 0.5, 10, 1, 2, 7] + 4, labels, splits, cases, **kw)
    assert np.allclose(scaled.test_scores, base.test_scores, atol=1e-4)


def test_probe_early_stopping_rule_matches_its_history():
    rng = np.random.default_rng(3)
    xt, yt = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    xv, yv = rng.normal(size=(15, 5)), rng.integers(0, 3, 15)
    model, hist, best = train_linear_probe(
        xt, yt, xv, yv, 3, max_epochs=40, patience=4, batch_size=8, progress=False
    )
    # reference: the first epoch with the highest val accuracy, ties broken by the lowest val loss
    ref = max(hist.itertuples(), key=lambda r: (r.val_accuracy, -r.val_loss, -r.epoch)).epoch
    assert best == ref
    assert len(hist) == min(40, best + 4)
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(xv, dtype=torch.float32))
    assert float((logits.argmax(1).numpy() == yv).mean()) == pytest.approx(hist.loc[best - 1, "val_accuracy"])
    # the outcome's learning curve and chosen epoch
    x, labels, splits, cases = knn_data(seed=7)
    out = classify.probe_classify(
        x, labels, splits, cases, selection="val", max_epochs=30, patience=3, progress=False
    )
    c = out.curve
    assert list(c.columns) == ["epoch", "train_loss", "selection_loss", "selection_accuracy"]
    ref = max(c.itertuples(), key=lambda r: (r.selection_accuracy, -r.selection_loss, -r.epoch)).epoch
    assert out.setting["epoch"] == ref and len(c) == min(30, ref + 3) and out.rule == "val"
    assert not out.setting["refit on all train"]


def test_classification_ci_matches_a_reference_loop():
    rng = np.random.default_rng(8)
    n, c = 40, 3
    y = rng.integers(0, c, n)
    scores = rng.dirichlet(np.ones(c), n) + np.eye(c)[y] * 0.3
    cases = rng.integers(0, 12, n)
    table = classify.classification_ci(y, scores, cases, n_boot=60, seed=4)
    # reference: draw cases (same generator call), repeat their queries, compute metrics on the repeated data
    order = list(dict.fromkeys(cases.tolist()))
    draws = np.random.default_rng(4).integers(0, len(order), (60, len(order)))
    values = []
    for draw in draws:
        idx = [i for d in draw for i in range(n) if cases[i] == order[d]]
        values.append(classification_metrics(y[idx], scores[idx]).metrics)
    point = classification_metrics(y, scores).metrics
    for row in table.itertuples():
        vals = np.array([v[row.metric] for v in values])
        lo, hi = np.nanpercentile(vals, [2.5, 97.5])
        assert row.value == pytest.approx(point[row.metric])
        assert row.ci_low == pytest.approx(lo) and row.ci_high == pytest.approx(hi)
        assert row.cases == len(order) and row.rows == n


# ---- chance values and paired comparisons (issue 13 review) -------------------------------------------------
def _ref_expected_f1_macro(y, n_classes, pi):
    """Macro-F1 over the test classes of the expected confusion matrix of a random classifier (loops)."""
    n = len(y)
    confusion = [[0.0] * n_classes for _ in range(n_classes)]  # [true][predicted]
    for true in y:
        for pred in range(n_classes):
            confusion[true][pred] += pi[pred]
    f1s = []
    for c in sorted(set(int(v) for v in y)):
        tp = confusion[c][c]
        predicted = sum(confusion[t][c] for t in range(n_classes))
        actual = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    assert n > 0
    return sum(f1s) / len(f1s)


@pytest.mark.parametrize("seed", range(25))
def test_chance_metrics_match_a_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    y = rng.integers(0, n_classes, int(rng.integers(1, 40)))
    y = y[y < n_classes - int(rng.integers(0, 2))] if (y < n_classes - 1).any() else y  # maybe a class absent
    train = rng.integers(0, 9, n_classes)
    train[0] += 1
    out = classify.chance_metrics(y, n_classes, train)
    # majority class: the best constant answer, by trying every one with sklearn's accuracy
    from sklearn.metrics import accuracy_score

    majority = max(accuracy_score(y, np.full(len(y), c)) for c in range(n_classes))
    assert out["accuracy"] == pytest.approx(majority) and out["f1_micro"] == pytest.approx(majority)
    uniform = _ref_expected_f1_macro(y, n_classes, [1 / n_classes] * n_classes)
    prior = _ref_expected_f1_macro(y, n_classes, list(train / train.sum()))
    assert out["f1_macro_uniform"] == pytest.approx(uniform)
    assert out["f1_macro_prior"] == pytest.approx(prior)
    assert out["f1_macro"] == pytest.approx(max(uniform, prior))
    assert out["roc_auc_macro"] == out["roc_auc_micro"] == 0.5


def test_chance_macro_f1_is_what_a_large_random_classifier_scores():
    # the expected-confusion-matrix value is the limit of a random classifier's macro-F1 on many queries
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    n_classes, n = 4, 200_000
    y = rng.choice(n_classes, n, p=[0.5, 0.3, 0.15, 0.05])
    pi = np.array([0.1, 0.2, 0.3, 0.4])
    pred = rng.choice(n_classes, n, p=pi)
    simulated = f1_score(y, pred, average="macro", labels=np.unique(y))
    out = classify.chance_metrics(y, n_classes, pi * 1000)
    assert out["f1_macro_prior"] == pytest.approx(simulated, abs=0.005)


def test_chance_metrics_name_bad_input():
    with pytest.raises(classify.ClassifyError, match="n_classes"):
        classify.chance_metrics(np.array([0, 3]), 2)
    with pytest.raises(classify.ClassifyError, match="train_counts"):
        classify.chance_metrics(np.array([0, 1]), 2, np.array([0, 0]))


def _outcome(y, scores, cases, head="kNN"):
    classes = np.array([f"c{i}" for i in range(scores.shape[1])])
    return classify.Outcome(
        head, "val", "", {}, None, classes, y, scores, cases,
        classification_metrics(y, scores, classes), {}, np.bincount(y, minlength=scores.shape[1]),
    )  # fmt: skip


def _ref_paired(a, b, metric, n_boot, seed):
    """Explicit loop: draw cases, repeat their queries, metric(a) - metric(b) per draw, percentiles, p-value."""
    order = list(dict.fromkeys(a.test_cases.tolist()))
    draws = np.random.default_rng(seed).integers(0, len(order), (n_boot, len(order)))
    diffs = []
    for draw in draws:
        idx = [i for d in draw for i in range(len(a.test_labels)) if a.test_cases[i] == order[d]]
        ma = classification_metrics(a.test_labels[idx], a.test_scores[idx]).metrics[metric]
        mb = classification_metrics(b.test_labels[idx], b.test_scores[idx]).metrics[metric]
        if not (np.isnan(ma) or np.isnan(mb)):
            diffs.append(ma - mb)
    below = sum(1 for d in diffs if d <= 1e-12) + 1
    above = sum(1 for d in diffs if d >= -1e-12) + 1
    p = min(1.0, 2 * min(below, above) / (len(diffs) + 1))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return lo, hi, p


@pytest.mark.parametrize("seed", range(3))
def test_paired_outcomes_match_a_reference_loop(seed):
    rng = np.random.default_rng(seed)
    n, c = 36, 3
    y = rng.integers(0, c, n)
    cases = rng.integers(0, 10, n)
    a = _outcome(y, rng.dirichlet(np.ones(c), n) + np.eye(c)[y] * 0.4, cases)
    b = _outcome(y, rng.dirichlet(np.ones(c), n), cases)
    table = classify.paired_outcomes(a, b, ["f1_macro", "accuracy", "roc_auc_macro"], n_boot=25, seed=seed)
    for row in table.itertuples():
        lo, hi, p = _ref_paired(a, b, row.metric, 25, seed)
        assert row.difference == pytest.approx(a.result.metrics[row.metric] - b.result.metrics[row.metric])
        assert row.low == pytest.approx(lo) and row.high == pytest.approx(hi)
        assert row.p_value == pytest.approx(p)
        assert row.n_cases == len(set(cases.tolist())) and row.n_queries == n


def test_against_baselines_pairs_every_encoder_with_every_baseline_and_adjusts_by_holm():
    from cbmir.metrics.bootstrap import holm

    rng = np.random.default_rng(3)
    n, c = 40, 3
    y = rng.integers(0, c, n)
    cases = rng.integers(0, 12, n)
    outs = {m: _outcome(y, rng.dirichlet(np.ones(c), n) + np.eye(c)[y] * w, cases)
            for m, w in (("raw-pixels", 0.0), ("enc-a", 0.5), ("enc-b", 0.2), ("random-vit", 0.1))}  # fmt: skip
    table = classify.against_baselines(outs, metrics=["f1_macro", "accuracy"], n_boot=30, seed=2)
    assert len(table) == 2 * 2 * 2
    assert set(zip(table["model"], table["baseline"], strict=True)) == {
        (m, b) for m in ("enc-a", "enc-b") for b in ("raw-pixels", "random-vit")
    }
    for metric, part in table.groupby("metric"):
        assert np.allclose(part["p_holm"], holm(part["p_value"].to_numpy()))
        one = part[(part["model"] == "enc-a") & (part["baseline"] == "raw-pixels")].iloc[0]
        lo, hi, p = _ref_paired(outs["enc-a"], outs["raw-pixels"], metric, 30, 2)
        assert one["low"] == pytest.approx(lo) and one["p_value"] == pytest.approx(p)
    other = dict(outs)
    other["enc-a"] = _outcome(y[::-1].copy(), outs["enc-a"].test_scores, cases)
    with pytest.raises(classify.ClassifyError, match="different test queries"):
        classify.against_baselines(other, n_boot=5)
    assert classify.against_baselines({"enc-a": outs["enc-a"]}, n_boot=5).empty


@pytest.mark.parametrize("seed", range(3))
def test_top_two_pairs_the_two_highest_point_estimates(seed):
    """The pair is chosen by the point estimates; its row is `paired_outcomes` of that pair (tested above against
    the reference loop)."""
    rng = np.random.default_rng(seed)
    n, c = 40, 3
    y = rng.integers(0, c, n)
    cases = rng.integers(0, 12, n)
    outs = {m: _outcome(y, rng.dirichlet(np.ones(c), n) + np.eye(c)[y] * w, cases)
            for m, w in (("a", 0.1), ("b", 0.6), ("c", 0.3), ("d", 0.0))}  # fmt: skip
    row = classify.top_two(outs, "f1_macro", n_boot=30, seed=seed).iloc[0]
    by_value = sorted(outs, key=lambda m: outs[m].result.metrics["f1_macro"], reverse=True)
    assert (row["model"], row["runner_up"]) == tuple(by_value[:2]) and row["difference"] >= 0
    want = classify.paired_outcomes(outs[by_value[0]], outs[by_value[1]], ["f1_macro"], n_boot=30, seed=seed)
    for col in ("difference", "low", "high", "p_value", "p_min", "n_cases", "n_queries"):
        assert row[col] == pytest.approx(want[col].iloc[0])
    assert classify.top_two({"a": outs["a"]}).empty


def test_outcome_ci_and_wide_table_carry_the_chance_values():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 30)
    o = _outcome(y, rng.dirichlet(np.ones(3), 30), rng.integers(0, 9, 30))
    long = classify.outcome_ci(o, "m", n_boot=10)
    same = classify.classification_ci(o.test_labels, o.test_scores, o.test_cases, o.classes, n_boot=10)
    np.testing.assert_allclose(long[["value", "ci_low", "ci_high"]], same[["value", "ci_low", "ci_high"]])
    wide = classify.wide_ci(long, ["accuracy", "f1_macro", "roc_auc_macro"])
    ch = classify.outcome_chance(o)
    assert wide["accuracy chance"].iloc[0] == pytest.approx(np.bincount(y).max() / len(y))
    assert wide["f1_macro chance"].iloc[0] == pytest.approx(ch["f1_macro"])
    assert wide["roc_auc_macro chance"].iloc[0] == 0.5


def test_knn_accuracy_with_k_1_equals_micro_p_at_1_of_the_same_search():
    from slow_stats import precision

    x, labels, splits, cases = knn_data(seed=4, n_cases=30)
    out = classify.knn_classify(x, labels, splits, cases, selection="val", k_max=1)
    assert out.setting["k (test)"] == 1
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    pos = ref_neighbours(x[train], x[test], 5, cases[train], cases[test])
    p_at_1 = [
        precision(list(labels[train][pos[i]]), labels[q], int((labels[train] == labels[q]).sum()), 1)
        for i, q in enumerate(test)
    ]
    assert out.result.metrics["accuracy"] == pytest.approx(np.nanmean(p_at_1))


def test_standardiser_in_chunks_and_on_rows_matches_the_whole_matrix():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(50, 6)) * [1, 5, 0, 2, 3, 1] + [0, 3, 7, -1, 2, 9]).astype(np.float32)
    rows = np.flatnonzero(rng.random(50) < 0.6)
    whole = x[rows].astype(np.float64)
    mean, scale = classify.fit_standardiser(x, rows, chunk_rows=7)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale, np.where(whole.std(axis=0) > 0, whole.std(axis=0), 1.0), rtol=1e-10)
    expected = ((whole - mean) / scale).astype(np.float32)
    np.testing.assert_array_equal(classify.standardise(x, mean, scale, rows, chunk_rows=4), expected)


def test_a_forced_val_rule_says_that_the_automatic_rule_would_not_use_val():
    labels = np.array(["a"] * 6 + ["b"] * 4)
    splits = np.array(["train", "val", "val", "test", "train", "train", "train", "val", "test", "train"])
    cases = np.array([f"p{i}" for i in range(10)])
    rule, reason = classify.choose_rule("val", labels, splits, cases, min_val_cases=2)
    assert (
        rule == "val"
        and "forced: the automatic rule would not use val, as 1 test class has fewer than 2" in reason
    )
    assert classify.choose_rule("auto", labels, splits, cases, min_val_cases=2)[0] == "grouped-cv"
    rule, reason = classify.choose_rule("val", labels, splits, cases, min_val_cases=1)
    assert rule == "val" and "forced" not in reason


def test_knn_reads_stored_neighbour_tables_and_searches_what_they_lack():
    from cbmir.search import Neighbours, search_rows

    x, labels, splits, cases = knn_data(seed=4)
    classes, y = np.unique(labels, return_inverse=True)
    row_ids = np.arange(len(x)) * 3 + 7  # the inputs are some rows of a larger manifest
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    asked: list[str] = []

    def table(split, drop_one=False, index_rows=train):
        query = np.flatnonzero(splits == split)[int(drop_one) :]
        nb = search_rows(x, train, query, k=10, cases=cases)  # ids here: positions of the inputs
        return Neighbours(row_ids[nb.query_rows], row_ids[nb.ids], nb.scores, row_ids[index_rows])

    def stored(split):
        asked.append(split)
        return table(split)

    searched = classify.knn_classify(x, labels, splits, cases, selection="val", k_max=8)
    read = classify.knn_classify(
        x, labels, splits, cases, selection="val", k_max=8, neighbour_table=stored, row_ids=row_ids
    )
    assert asked == ["val", "test"]
    assert read.setting == searched.setting
    np.testing.assert_array_equal(read.curve["f1_micro"], searched.curve["f1_micro"])
    np.testing.assert_array_equal(read.test_scores, searched.test_scores)

    # the votes come from the table: every test query given the same first train rows votes their classes
    def fixed(split):
        t = table(split)
        if split == "test":
            t.ids[:] = row_ids[train[:10]]
        return t

    voted = classify.knn_classify(
        x, labels, splits, cases, selection="val", k_max=8, neighbour_table=fixed, row_ids=row_ids
    )
    k = voted.setting["k (test)"]
    share = np.bincount(y[train[:k]], minlength=len(classes)) / k
    np.testing.assert_allclose(voted.test_scores, np.tile(share, (len(test), 1)))

    # a table that lacks a query row (or has too few neighbours) is not used: the search runs instead
    def partial(split):
        return table(split, drop_one=True)

    seen = classify.knn_classify(
        x, labels, splits, cases, selection="val", k_max=8, neighbour_table=partial, row_ids=row_ids
    )
    np.testing.assert_array_equal(seen.test_scores, searched.test_scores)
    assert classify._from_table(table("test"), row_ids, test, train, 11) is None

    # a table over another index is an error, not a silent mismatch
    def other_index(split):
        return table(split, index_rows=train[1:])

    with pytest.raises(classify.ClassifyError, match="train rows"):
        classify.knn_classify(
            x, labels, splits, cases, selection="val", k_max=8, neighbour_table=other_index, row_ids=row_ids
        )


def test_knn_ties_go_to_the_alphabetically_first_label():
    """Notebook 7 states the rule: with k = 2 and one neighbour of each class, the first label in sorted order."""
    labels = np.array(["zeta", "alpha", "alpha"])
    neighbours = np.array([[1, 0], [0, 1]])  # one "alpha" and one "zeta" among the first 2, in either order
    assert classify.knn_predictions(neighbours, 2, [2]).tolist() == [[0, 0]]
    assert classify.knn_predictions(neighbours, 2, [1]).tolist() == [[1, 0]]
    scores = np.array([[0.5, 0.5]])
    assert classification_metrics(np.array([0]), scores).metrics["accuracy"] == 1.0  # argmax: code 0
    assert np.unique(labels).tolist() == ["alpha", "zeta"]  # classify._prepare's codes: the sorted labels
