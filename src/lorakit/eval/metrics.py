"""Text metrics for generated answers: `text_scores()` for one prediction, `corpus_scores()` for a whole set.

Every metric sees text segmented by the pair's language (`segment()`): Chinese by jieba words (or characters),
other text by lowercase words and punctuation marks. ROUGE comes from rouge-score, BLEU and chrF from sacrebleu,
exact match and token F1 follow SQuAD's normalisation. All scores are on a 0-100 scale.
"""

from __future__ import annotations

import functools
import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

import sacrebleu
from rouge_score import rouge_scorer

from lorakit.errors import ConfigError

CHINESE_UNITS = ("words", "characters")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SCORE_NAMES = (*ROUGE_TYPES, "bleu4", "chrf", "exact_match", "f1")

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# A Han character alone, a run of other word characters, or one punctuation mark / symbol.
_TOKEN = re.compile(f"[{_HAN}]|[^\\W{_HAN}]+|[^\\w\\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def detect_language(text: str) -> str:
    """"zh" when Han characters outnumber Latin words, else "en".

    A Han character carries about as much as an English word, so "用 Python 写一个 list 排序" counts as Chinese.
    """
    han = len(_HAN_CHAR.findall(text))
    return "zh" if han and han >= len(_LATIN_WORD.findall(text)) else "en"


def segment(text: str, language: str | None = None, chinese: str = "words") -> list[str]:
    """Lowercase tokens of `text`: words and single punctuation marks; Chinese by jieba words or by characters.

    `language` is detected when None. Non-Han text is split the same way in both languages, so a Chinese answer
    with an English name in it matches the name word for word.
    """
    _check_unit(chinese)
    text = text.lower()
    if (language or detect_language(text)) != "zh" or chinese == "characters":
        return _TOKEN.findall(text)
    tokens = []
    for piece in _jieba().lcut(text):
        tokens.extend([piece] if _HAN_CHAR.search(piece) else _TOKEN.findall(piece))
    return tokens


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading banner goes to stderr on every first cut
    jieba.initialize()
    return jieba


def _check_unit(chinese: str) -> None:
    if chinese not in CHINESE_UNITS:
        raise ConfigError(f"Unknown Chinese segmentation '{chinese}': use 'words' (jieba) or 'characters'.")


def text_scores(prediction: str, reference: str, chinese: str = "words") -> dict[str, float]:
    """ROUGE-1/2/L F-measure, smoothed sentence BLEU-4, chrF, exact match and token F1 of one prediction, 0-100.

    Both texts are segmented in the reference's language (the prediction's when the reference is empty). Two empty
    texts score 100 on every metric; one empty text scores 0.
    """
    language = detect_language(reference if reference.strip() else prediction)
    pred_tokens = segment(prediction, language, chinese)
    ref_tokens = segment(reference, language, chinese)
    scores = _rouge(pred_tokens, ref_tokens)
    scores["bleu4"] = _bleu(pred_tokens, ref_tokens)
    scores["chrf"] = _chrf(prediction, reference)
    pred_words = _squad_tokens(prediction, language, chinese)
    ref_words = _squad_tokens(reference, language, chinese)
    scores["exact_match"] = 100.0 if pred_words == ref_words else 0.0
    scores["f1"] = _token_f1(pred_words, ref_words)
    return scores


def corpus_scores(predictions: Sequence[str], references: Sequence[str], chinese: str = "words",
                  per_sample: Sequence[Mapping[str, float]] | None = None) -> dict[str, float]:
    """Corpus BLEU-4 and chrF (sacrebleu's corpus statistics), mean ROUGE-1/2/L, exact match and F1, and `count`.

    `per_sample` reuses `text_scores()` results already computed for these pairs. Raises ValueError for lists of
    different lengths or no pairs at all.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pass one of each per "
                         "sample.")
    if not predictions:
        raise ValueError("corpus_scores() needs at least one prediction/reference pair.")
    if per_sample is None:
        per_sample = [text_scores(p, r, chinese) for p, r in zip(predictions, references)]
    result = {name: sum(s[name] for s in per_sample) / len(per_sample)
              for name in (*ROUGE_TYPES, "exact_match", "f1")}
    segmented_predictions, segmented_references = [], []
    for prediction, reference in zip(predictions, references):
        language = detect_language(reference if reference.strip() else prediction)
        segmented_predictions.append(" ".join(segment(prediction, language, chinese)))
        segmented_references.append(" ".join(segment(reference, language, chinese)))
    result["bleu4"] = min(sacrebleu.corpus_bleu(segmented_predictions, [segmented_references], smooth_method="exp",
                                                tokenize="none").score, 100.0)
    result["chrf"] = sacrebleu.corpus_chrf(list(predictions), [list(references)]).score
    result["count"] = float(len(predictions))
    return {name: result[name] for name in (*SCORE_NAMES, "count")}


def _degenerate(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """The score of a pair where one side is empty: 100 when both are, else 0."""
    return 100.0 if not prediction and not reference else 0.0


class _PresegmentedTokenizer:
    """rouge-score's tokenizer interface over tokens already made: its default keeps only [a-z0-9], no Chinese."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@functools.cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_PresegmentedTokenizer())


def _rouge(pred_tokens: list[str], ref_tokens: list[str]) -> dict[str, float]:
    """ROUGE F-measures on words only: like the original ROUGE, punctuation marks are not counted.

    Two texts with no bigrams at all (one word each) get ROUGE-2 from whether the words agree, not 0.
    """
    pred_words = [t for t in pred_tokens if not _is_punctuation(t)]
    ref_words = [t for t in ref_tokens if not _is_punctuation(t)]
    if not pred_words or not ref_words:
        same = 100.0 if pred_tokens == ref_tokens else 0.0  # two empty texts, or the same punctuation only
        return {name: same for name in ROUGE_TYPES}
    scores = {name: score.fmeasure * 100
              for name, score in _rouge_scorer().score(" ".join(ref_words), " ".join(pred_words)).items()}
    if len(pred_words) < 2 and len(ref_words) < 2:  # no bigrams on either side: one-word answers, right or wrong
        scores["rouge2"] = 100.0 if pred_words == ref_words else 0.0
    return scores


def _bleu(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    """Sentence BLEU-4 with sacrebleu's "exp" smoothing and effective order (short answers are not all zero)."""
    if not pred_tokens or not ref_tokens:
        return _degenerate(pred_tokens, ref_tokens)
    # Pre-segmented text with tokenize="none" rather than sacrebleu's "zh" tokenizer: BLEU then counts the same words
    # as ROUGE and F1 (jieba words, or characters when asked), and a corpus mixing languages is split per sample.
    bleu = sacrebleu.sentence_bleu(" ".join(pred_tokens), [" ".join(ref_tokens)], smooth_method="exp",
                                   tokenize="none")
    return min(bleu.score, 100.0)  # float error puts identical texts at 100.00000000000004


def _chrf(prediction: str, reference: str) -> float:
    if not prediction.strip() or not reference.strip():
        return _degenerate(prediction.strip(), reference.strip())
    return sacrebleu.sentence_chrf(prediction, [reference]).score


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c)[0] in "PS" for c in token)


def _squad_tokens(text: str, language: str, chinese: str) -> list[str]:
    """SQuAD's normalisation (lowercase, no punctuation, no English articles), then `segment()`."""
    text = "".join(c for c in text.lower() if c not in string.punctuation and unicodedata.category(c)[0] not in "PS")
    if language == "en":
        text = _ARTICLES.sub(" ", text)
    return segment(text, language, chinese)


def _token_f1(prediction: list[str], reference: list[str]) -> float:
    if not prediction or not reference:
        return _degenerate(prediction, reference)
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 200 * precision * recall / (precision + recall)
