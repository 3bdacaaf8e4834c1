"""tasks.metrics EM/F1 against the official SQuAD v1.1 evaluation script, on hand-checked tricky cases."""

import re
import string
from collections import Counter

import pytest

from tasks.metrics import exact_match, f1
from tasks.text import normalize_answer

# --- Oracle: the functions of the official SQuAD v1.1 evaluation script `evaluate-v1.1.py`, copied verbatim
# (style aside). Origin: the "Evaluation Script v1.1" of https://rajpurkar.github.io/SQuAD-explorer/
# (CodaLab bundle 0xbcd57bee090b421c982906709c8c27e1; mirrored e.g. in allenai/bi-att-flow squad/evaluate-v1.1.py).


def official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return (official_normalize_answer(prediction) == official_normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)

# --- End of the oracle.


# (prediction, gold answers, expected EM, expected F1), each worked out by hand (comment: normalised tokens).
CASES = [
    # articles, also inside words (the regex has word boundaries)
    ("The Eiffel Tower", ["eiffel tower"], 1.0, 1.0),
    ("the theatre", ["Theatre"], 1.0, 1.0),  # "theatre" keeps its "the"
    ("another one", ["other one"], 0.0, 0.5),  # [another one] vs [other one]: 1 common, P=R=1/2
    ("a theatre and an opera", ["Theatre, Opera"], 0.0, 0.8),  # [theatre and opera] vs [theatre opera]: P=2/3 R=1
    ("The", ["a"], 1.0, 0.0),  # both normalise to "": equal strings, but no common token for F1
    ("The The", ["The The"], 1.0, 0.0),  # same answer, F1 0 (v1.1 has no empty-answer rule)
    ("", ["the", "x"], 1.0, 0.0),  # empty prediction equals the normalised "the"
    # ASCII punctuation is deleted (not replaced by a space)
    ("U.S.A.", ["USA"], 1.0, 1.0),
    ("well-known", ["well known"], 0.0, 0.0),  # [wellknown] vs [well known]
    ("Kenya's", ["kenyas"], 1.0, 1.0),
    ("it's", ["it is"], 0.0, 0.0),  # [its] vs [it is]
    # unicode punctuation and quotes are not in string.punctuation: they stay
    ("“Hamlet”", ["Hamlet"], 0.0, 0.0),  # [“hamlet”] vs [hamlet]
    ("1990–1995", ["1990-1995"], 0.0, 0.0),  # [1990–1995] vs [19901995]
    ("“the” answer", ["answer"], 0.0, 0.5),  # "the" between curly quotes is removed: [“ ” answer], P=1/3 R=1
    ("Théâtre de la Ville", ["theatre de la ville"], 0.0, 0.75),  # accents kept: 3 of 4 tokens in common
    # whitespace and case
    ("  New\tYork\n City ", ["new york city"], 1.0, 1.0),
    ("PARIS", ["paris"], 1.0, 1.0),
    # numbers: commas and decimal points are punctuation
    ("1,000,000", ["1000000"], 1.0, 1.0),
    ("3.14", ["314"], 1.0, 1.0),
    ("1,000 people", ["1000"], 0.0, 2 / 3),  # [1000 people] vs [1000]: P=1/2 R=1
    ("£41.6 million", ["41.6 million pounds"], 0.0, 0.4),  # [£416 million] vs [416 million pounds]: P=1/2 R=1/3
    # empty prediction
    ("", ["Denver Broncos"], 0.0, 0.0),
    # several gold answers: the max over them, per metric
    ("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos team"], 1.0, 1.0),
    ("Denver Broncos team", ["Broncos", "Denver Broncos"], 0.0, 0.8),  # 0.5 vs [denver broncos]: P=2/3 R=1
    # repeated tokens: Counter intersection counts each common token min(pred, gold) times
    ("the the cat cat cat", ["cat"], 0.0, 0.5),  # [cat cat cat] vs [cat]: 1 common, P=1/3 R=1
    ("cat cat dog", ["cat dog dog"], 0.0, 2 / 3),  # common: cat x1, dog x1 -> P=R=2/3
]


@pytest.mark.parametrize(("prediction", "golds", "em", "f1_expected"), CASES)
def test_em_f1_identical_to_official_script(prediction, golds, em, f1_expected):
    official_em = metric_max_over_ground_truths(official_exact_match_score, prediction, golds)
    official_f1 = metric_max_over_ground_truths(official_f1_score, prediction, golds)
    assert float(official_em) == em  # the oracle agrees with the hand-worked values
    assert official_f1 == pytest.approx(f1_expected)
    assert exact_match(prediction, golds) == official_em
    assert f1(prediction, golds) == official_f1  # identical, not merely close


@pytest.mark.parametrize("text", sorted({p for p, *_ in CASES} | {g for _, golds, *_ in CASES for g in golds}))
def test_normalisation_identical_to_official_script(text):
    assert normalize_answer(text) == official_normalize_answer(text)
