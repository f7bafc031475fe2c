"""Text metrics against values counted by hand: ROUGE, BLEU, exact match and F1, in English and Chinese."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from lorakit.errors import ConfigError
from lorakit.eval.metrics import SCORE_NAMES, corpus_scores, detect_language, segment, text_scores


def f_measure(overlap: int, predicted: int, reference: int) -> float:
    precision, recall = overlap / predicted, overlap / reference
    return 0.0 if overlap == 0 else 200 * precision * recall / (precision + recall)


def test_detect_language():
    assert detect_language("我爱北京天安门") == "zh"
    assert detect_language("The cat sat on the mat.") == "en"
    assert detect_language("用 Python 写一个 list 排序") == "zh"  # 6 Han characters, 2 English words
    assert detect_language("Yes, my name is Lumi (露米).") == "en"
    assert detect_language("") == "en"


def test_segment_english_lowercases_and_splits_punctuation():
    assert segment("The cat, I'm sure, sat.") == ["the", "cat", ",", "i", "'", "m", "sure", ",", "sat", "."]


def test_segment_chinese_words_and_characters():
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert segment("我爱北京天安门", chinese="characters") == list("我爱北京天安门")
    # English inside Chinese is split as in English text, in both modes.
    assert segment("我用Lorakit训练。", chinese="characters") == ["我", "用", "lorakit", "训", "练", "。"]
    assert "lorakit" in segment("我用 Lorakit 训练模型。")


def test_segment_rejects_unknown_unit():
    with pytest.raises(ConfigError, match="'words' \\(jieba\\) or 'characters'"):
        segment("我爱北京", chinese="phrases")


def test_rouge_by_hand_english():
    scores = text_scores("the cat sat on the mat", "the cat is on the mat")
    # Unigrams: the x2, cat, on, mat shared (5 of 6 each side). Bigrams: "the cat", "on the", "the mat" (3 of 5).
    # Longest common subsequence: "the cat on the mat" (5).
    assert scores["rouge1"] == pytest.approx(f_measure(5, 6, 6))
    assert scores["rouge2"] == pytest.approx(f_measure(3, 5, 5))
    assert scores["rougeL"] == pytest.approx(f_measure(5, 6, 6))


def test_rouge_ignores_punctuation_and_case():
    assert text_scores("The cat, sat.", "the cat sat")["rouge1"] == pytest.approx(100)


def test_rouge_by_hand_chinese_words():
    # jieba: 我/爱/北京 against 我/爱/北京/天安门: 3 unigrams shared, bigrams 我爱, 爱北京 (2 of 2 vs 3), LCS 3.
    scores = text_scores("我爱北京", "我爱北京天安门")
    assert scores["rouge1"] == pytest.approx(f_measure(3, 3, 4))
    assert scores["rouge2"] == pytest.approx(f_measure(2, 2, 3))
    assert scores["rougeL"] == pytest.approx(f_measure(3, 3, 4))


def test_rouge_by_hand_chinese_characters():
    # 4 of 7 characters shared; bigrams 我爱, 爱北, 北京 (3 of 3 vs 6); LCS 4.
    scores = text_scores("我爱北京", "我爱北京天安门", chinese="characters")
    assert scores["rouge1"] == pytest.approx(f_measure(4, 4, 7))
    assert scores["rouge2"] == pytest.approx(f_measure(3, 3, 6))
    assert scores["rougeL"] == pytest.approx(f_measure(4, 4, 7))


def test_rouge_chinese_is_not_dropped():
    # rouge-score's own tokenizer keeps only [a-z0-9], which would score any Chinese pair 0.
    assert text_scores("北京欢迎你", "北京欢迎你")["rouge1"] == 100
    assert text_scores("北京欢迎你", "上海欢迎你")["rouge1"] > 0


def test_bleu_by_hand_with_smoothing():
    # Precisions 5/6, 3/5, 1/4 and 0/3; sacrebleu's "exp" smoothing replaces the zero with 1/(2 * 3).
    # Same length, so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert text_scores("the cat sat on the mat", "the cat is on the mat")["bleu4"] == pytest.approx(expected)


def test_bleu_by_hand_with_brevity_penalty():
    # Precisions 6/6, 4/5, 3/4, 2/3; 6 tokens against 7, so the brevity penalty is exp(1 - 7/6).
    expected = 100 * math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert text_scores("the cat sat on the mat", "the cat sat on the red mat")["bleu4"] == pytest.approx(expected)


def test_bleu_chinese_counts_jieba_words():
    # 我/爱/北京 against 我/爱/北京/天安门: precisions 3/3, 2/2, 1/1; a 3-token hypothesis has no 4-grams, so
    # sentence BLEU's effective order stops at 3. Brevity penalty exp(1 - 4/3).
    expected = 100 * math.exp(1 - 4 / 3)
    assert text_scores("我爱北京", "我爱北京天安门")["bleu4"] == pytest.approx(expected)


def test_chrf_matches_sacrebleu_on_raw_text():
    assert text_scores("the cat sat on the mat", "the cat is on the mat")["chrf"] == pytest.approx(
        sacrebleu.sentence_chrf("the cat sat on the mat", ["the cat is on the mat"]).score)


@pytest.mark.parametrize("prediction, reference, exact, f1", [
    ("The Cat!", "cat", 100, 100),  # case, punctuation and articles are normalised away
    ("a cat sat", "the cat sat down", 0, f_measure(2, 2, 3)),
    ("Paris, France.", "paris france", 100, 100),
    ("北京。", "北京", 100, 100),  # Chinese punctuation too
    ("我爱北京", "我爱北京天安门", 0, f_measure(3, 3, 4)),
    ("the", "a", 100, 100),  # nothing left on either side: SQuAD counts that as a match
    ("cat", "", 0, 0),
])
def test_exact_match_and_f1(prediction, reference, exact, f1):
    scores = text_scores(prediction, reference)
    assert scores["exact_match"] == exact
    assert scores["f1"] == pytest.approx(f1)


@pytest.mark.parametrize("text", ["The cat sat on the mat.", "我爱北京天安门。", "ok", "!!"])
def test_identical_texts_score_100(text):
    assert text_scores(text, text) == pytest.approx(dict.fromkeys(SCORE_NAMES, 100.0))


def test_empty_texts():
    assert text_scores("", "") == dict.fromkeys(SCORE_NAMES, 100.0)
    assert text_scores("", "the cat sat") == dict.fromkeys(SCORE_NAMES, 0.0)
    assert text_scores("the cat sat", "") == dict.fromkeys(SCORE_NAMES, 0.0)
    assert text_scores("   ", "我爱北京") == dict.fromkeys(SCORE_NAMES, 0.0)


def test_corpus_scores_pool_ngrams_and_average_the_rest():
    predictions = ["the cat sat on the mat", "我爱北京"]
    references = ["the cat is on the mat", "我爱北京天安门"]
    scores = corpus_scores(predictions, references)
    per_sample = [text_scores(p, r) for p, r in zip(predictions, references)]
    for name in ("rouge1", "rouge2", "rougeL", "exact_match", "f1"):
        assert scores[name] == pytest.approx(sum(s[name] for s in per_sample) / 2)
    # Corpus BLEU pools n-gram counts: (5+3)/(6+3), (3+2)/(5+2), (1+1)/(4+1), (0+0)/(3+0) -> smoothed 1/(2*3),
    # and 9 hypothesis tokens against 10 reference tokens.
    expected = 100 * math.exp(1 - 10 / 9) * (8 / 9 * 5 / 7 * 2 / 5 * 1 / 6) ** 0.25
    assert scores["bleu4"] == pytest.approx(expected)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert scores["count"] == 2


def test_corpus_scores_of_perfect_predictions():
    texts = ["The cat sat on the mat.", "我爱北京天安门。"]
    scores = corpus_scores(texts, texts)
    assert {name: scores[name] for name in SCORE_NAMES} == pytest.approx(dict.fromkeys(SCORE_NAMES, 100.0))


def test_corpus_scores_refuse_mismatched_lists():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        corpus_scores([], [])


def test_rouge2_of_one_word_answers_is_whether_they_agree():
    assert text_scores("北京", "北京")["rouge2"] == 100
    assert text_scores("北京", "上海")["rouge2"] == 0
    assert text_scores("北京", "北京天安门")["rouge2"] == 0  # one side has a bigram the other lacks
