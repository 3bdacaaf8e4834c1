import pytest

from tasks.metrics import answer_support, bootstrap_ci, exact_match, f1, normalize_answer, retrieval_scores


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
    assert s == {"recall_at_k": 1.0, "precision_at_k": pytest.approx(2 / 3), "mrr": 0.5}
    assert retrieval_scores(["d2"], "d1", 1)["recall_at_k"] == 0.0


def test_bootstrap_interval_contains_mean_and_is_deterministic():
    values = [0.0, 1.0] * 50
    low, high = bootstrap_ci(values, 500, seed=1)
    assert low < 0.5 < high
    assert (low, high) == bootstrap_ci(values, 500, seed=1)
    assert bootstrap_ci([1.0] * 10, 100, seed=1) == (1.0, 1.0)
