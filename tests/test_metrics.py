import math

import pytest

from tasks.metrics import (
    answer_support,
    bootstrap_ci,
    exact_match,
    f1,
    paired_bootstrap,
    retrieval_scores,
)
from tasks.text import normalize_answer


@pytest.mark.parametrize(("text", "expected"), [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("an apple, a pear", "apple pear"),
    ("Theory of the case", "theory of case"),
    ("£41.6 million", "£416 million"),
])
def test_normalize_answer_matches_squad(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_takes_best_gold():
    assert exact_match("the 1996", ["1995", "1996"]) == 1.0
    assert exact_match("in 1996", ["1996"]) == 0.0


def test_f1_token_overlap():
    # pred tokens: south african schools act ; gold: schools act -> p=2/4 r=1 -> f1=2/3
    assert f1("South African Schools Act", ["the Schools Act"]) == pytest.approx(2 / 3)
    assert f1("nothing", ["something"]) == 0.0
    assert f1("", ["x"]) == 0.0


def test_answer_support_and_empty():
    assert answer_support("212 kg", ["The buoy weighs 212 kg."]) == 1.0
    assert answer_support("300 kg", ["The buoy weighs 212 kg."]) == 0.5
    assert answer_support("", ["anything"]) is None


def test_retrieval_scores():
    s = retrieval_scores(["d2", "d1", "d1"], "d1", 3)
    assert s == {"recall_at_k": 1.0, "precision_at_k": pytest.approx(2 / 3), "mrr": 0.5,
                 "ndcg_at_k": pytest.approx(1 / math.log2(3))}
    assert retrieval_scores(["d2"], "d1", 1)["recall_at_k"] == 0.0


def test_bootstrap_interval_contains_mean_and_is_deterministic():
    values = [0.0, 1.0] * 50
    low, high = bootstrap_ci(values, 500, seed=1)
    assert low < 0.5 < high
    assert (low, high) == bootstrap_ci(values, 500, seed=1)
    assert bootstrap_ci([1.0] * 10, 100, seed=1) == (1.0, 1.0)


def test_paired_bootstrap_identical_systems_is_not_significant():
    scores = [0.0, 0.5, 1.0, 0.2] * 10
    result = paired_bootstrap(scores, scores, 500, seed=1, significance_level=0.05)
    assert (result.n, result.mean_difference, result.ci_low, result.ci_high) == (40, 0.0, 0.0, 0.0)
    assert result.p_value == 1.0 and not result.significant


def test_paired_bootstrap_consistent_gain_is_significant():
    champion = [0.0] * 40
    challenger = [1.0] * 30 + [0.0] * 10
    result = paired_bootstrap(challenger, champion, 1000, seed=1, significance_level=0.05)
    assert result.mean_difference == pytest.approx(0.75)
    assert 0 < result.ci_low < 0.75 < result.ci_high <= 1.0
    assert result.p_value == pytest.approx(1 / 1001) and result.significant


def test_paired_bootstrap_noisy_small_gain_is_not_significant():
    result = paired_bootstrap([1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0], 1000, seed=1,
                              significance_level=0.05)
    assert result.mean_difference == pytest.approx(0.2)
    assert result.ci_low < 0 < result.ci_high and result.p_value > 0.05 and not result.significant


def test_pairing_detects_a_small_gain_that_unpaired_intervals_cannot():
    champion = [i / 39 for i in range(40)]  # questions of very different difficulty
    challenger = [s + 0.02 for s in champion]  # better by 0.02 on every question
    result = paired_bootstrap(challenger, champion, 1000, seed=1, significance_level=0.05)
    assert result.significant and result.ci_low == pytest.approx(0.02) == result.ci_high
    low, _ = bootstrap_ci(challenger, 1000, seed=1)
    _, high = bootstrap_ci(champion, 1000, seed=1)
    assert low < high  # the separate 95% intervals overlap


def test_paired_bootstrap_drops_missing_pairs_and_rejects_unpaired_input():
    result = paired_bootstrap([1.0, float("nan"), 1.0], [0.0, 0.0, float("nan")], 200, seed=0, significance_level=0.05)
    assert result.n == 1 and result.mean_difference == 1.0
    assert paired_bootstrap([1.0, 0.0], [0.0, 1.0], 200, seed=3, significance_level=0.05) == \
        paired_bootstrap([1.0, 0.0], [0.0, 1.0], 200, seed=3, significance_level=0.05)
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([1.0, 0.0], [1.0], 200, seed=0, significance_level=0.05)


def test_macro_f1_averages_per_label_f1_over_gold_and_predicted_labels():
    from tasks.metrics import macro_f1

    gold = ["yes", "yes", "no", "no", "maybe"]
    pred = ["yes", "no", "no", "no", "yes"]
    # yes: tp1 fp1 fn1 -> 0.5; no: tp2 fp1 fn0 -> 0.8; maybe: tp0 -> 0
    assert macro_f1(pred, gold) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(["Yes."], ["yes"]) == 1.0


def test_confusion_matrix_counts_gold_rows_and_predicted_columns():
    from tasks.metrics import confusion_matrix

    table = confusion_matrix(["yes", "no", "no", "perhaps"], ["yes", "yes", "no", "no"], ["yes", "no"])
    assert table.loc["yes"].tolist() == [1, 1, 0] and table.loc["no"].tolist() == [0, 1, 1]
    assert list(table.columns) == ["yes", "no", "other"]
    assert "other" not in confusion_matrix(["yes"], ["yes"], ["yes", "no"]).columns


def test_bootstrap_statistic_brackets_the_statistic():
    import numpy as np

    from tasks.metrics import bootstrap_statistic

    values = np.array([0.0, 1.0] * 50)
    low, high = bootstrap_statistic(len(values), lambda idx: float(values[idx].mean()), 500, seed=1)
    assert low < 0.5 < high and high - low < 0.3
