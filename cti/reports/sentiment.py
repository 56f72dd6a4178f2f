"""A transparent sentiment classifier for short Russian and English customer texts.

Theory of operation: the text is split into words (Cyrillic letters make it
Russian), each word is reduced to its Snowball stem (snowballstemmer, pure
Python, from PyPI; no model files), and stems are looked up in two small
lexicons (positive and negative words, stemmed when the module loads). A
negation word ("не", "нет", "not", "never", "n't"...) flips the polarity of the
next sentiment word within three words; words after "but"/"но"/"а" count
double (the conclusion usually follows it); a few phrases ("money back",
"верните деньги") and emoticons count as words. Score > 0 is positive, < 0
negative, 0 neutral. It is fast (no I/O, about 10 µs per short text) and every
decision can be explained with ``explain()``. Ambiguous words ("like",
"work", "please"; "ценю" shares a stem with "цены") are left out. Accuracy on
the labelled samples in tests/fixtures/sentiment is measured by
tests/functional/cti/test_reports.py (a development set the lexicons were
tuned on, and a hold-out set written after them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer  # type: ignore[import-untyped]

MAX_CHARS = 4096
NEGATION_REACH = 3

_WORD = re.compile(r"[:;]-?[()DР]|[a-zа-яё]+(?:'[a-z]+)?|[.,!?;:]", re.IGNORECASE)
_STOPS = {".", ",", "!", "?", ";", ":"}
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)

POSITIVE_EN = """
thank thanks thankful grateful appreciate love loved lovely great good nice fine
excellent perfect perfectly awesome amazing wonderful fantastic super superb brilliant best
better happy glad satisfied delighted enjoy enjoyed helpful friendly polite quick fast
easy convenient recommend well done solved resolved cool pleasant
generous favourite favorite impressed smooth reliable worth bargain win
""".split()

NEGATIVE_EN = """
bad terrible awful horrible worst worse poor disappointed disappointing disappointment angry
annoyed annoying hate hated scam fraud lie lies liar misleading rude unhelpful useless broken
late slow crash crashing crashes unacceptable complaint complain wrong fail failed failure
error problem problems ridiculous expensive overcharged charged twice spam waste cancel
dissatisfied unhappy nightmare disgusting never nobody stolen cheated hidden lost
""".split()

POSITIVE_RU = """
спасибо благодарю благодарна благодарен отлично отличный отличная отличное хорошо хороший
хорошая хорошее прекрасно прекрасный прекрасное замечательно замечательный замечательная
великолепно великолепный супер класс классно молодцы молодец доволен довольна довольны рад
рада рады понравилось понравилась понравился нравится люблю выгодно выгодный выгодное
выгодная удобно удобный быстро быстрый быстрая быстрое вежливый вежливая вежливо помог
помогла помогли помощь работает сработала сработал сработало решена решено решили лучший
лучшая лучшее идеально идеальный чудесный чудесно приятный приятная приятно рекомендую
порадовал порадовала восторг легко бесплатный
""".split()

NEGATIVE_RU = """
плохо плохой плохая плохое ужасно ужасный ужасная ужасное отвратительно отвратительный
кошмар обман обманули мошенники разочарован разочарована разочарование зол злой злюсь
недоволен недовольна недовольны ненавижу худший худшая хуже грубый груб груба грубо
бесполезно бесполезный сломан сломана сломано сломался опоздала опоздал опоздали медленно
падает ошибка проблема проблемы недопустимо дорого дважды спам враньё вранье ложь
заблуждение скрыты скрытые жалоба отменю отменить пустая трата никто никогда верните
возмутительно безобразие ужас хамство
""".split()

NEGATIONS = {
    "not",
    "no",
    "never",
    "nothing",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "wasn't",
    "won't",
    "can't",
    "cannot",
    "не",
    "нет",
    "ни",
    "без",
}
BUT = {"but", "however", "но", "однако", "а"}
# Words that are negative only as part of a phrase (and neutral alone).
PHRASES = {("money", "back"): -1, ("верните", "деньги"): -1, ("well", "done"): 1}
EMOTICONS = {":)": 1, ":-)": 1, ":D": 1, ";)": 1, ":(": -1, ":-(": -1}


@dataclass(frozen=True, slots=True)
class Verdict:
    label: str  # "positive" | "negative" | "neutral"
    score: float
    language: str
    hits: tuple[tuple[str, float], ...]


@lru_cache(maxsize=2)
def _stemmer(language: str) -> object:
    return snowballstemmer.stemmer("russian" if language == "ru" else "english")


@lru_cache(maxsize=65536)
def _stem(language: str, word: str) -> str:
    # Cached: customers' words repeat a lot, and a Snowball stem costs ~0.1 ms in
    # pure Python (the tags report classifies every tagged conversation's text).
    stemmer = _stemmer(language)
    stem: str = stemmer.stemWord(word)  # type: ignore[attr-defined]
    return stem


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, dict[str, int]]:
    lex: dict[str, dict[str, int]] = {"en": {}, "ru": {}}
    for language, words, value in (
        ("en", POSITIVE_EN, 1),
        ("en", NEGATIVE_EN, -1),
        ("ru", POSITIVE_RU, 1),
        ("ru", NEGATIVE_RU, -1),
    ):
        for word in words:
            lex[language][_stem(language, word.replace("ё", "е"))] = value
    return lex


def language_of(text: str) -> str:
    return "ru" if _CYRILLIC.search(text) else "en"


def classify(text: str) -> Verdict:
    text = text[:MAX_CHARS]
    language = language_of(text)
    lexicon = _lexicon()[language]
    tokens = [t if t in EMOTICONS else t.lower().replace("ё", "е") for t in _WORD.findall(text)]
    score = 0.0
    hits: list[tuple[str, float]] = []
    negate_left = 0
    weight = 1.0
    skip = False
    for i, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        if token in EMOTICONS:
            hits.append((token, float(EMOTICONS[token])))
            score += EMOTICONS[token]
            continue
        if token in _STOPS:  # a negation does not reach past a clause boundary
            negate_left = 0
            continue
        if token in NEGATIONS or token.endswith("n't"):
            negate_left = NEGATION_REACH
            continue
        if token in BUT:
            weight = 2.0
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        value = PHRASES.get((token, nxt))
        if value is not None:
            skip = True
        else:
            value = lexicon.get(_stem(language, token))
        if value is not None:
            if negate_left > 0:
                value = -value
                negate_left = 0
            hits.append((token, value * weight))
            score += value * weight
        elif negate_left > 0:
            negate_left -= 1
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return Verdict(label, score, language, tuple(hits))


def explain(text: str) -> str:
    verdict = classify(text)
    words = ", ".join(f"{w}:{v:+g}" for w, v in verdict.hits) or "no sentiment words"
    return f"{verdict.label} ({verdict.language}, score {verdict.score:+g}: {words})"
