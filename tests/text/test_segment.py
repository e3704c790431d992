"""Segmenters: property tests of the invariants and hand-checked cases."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attrlens.errors import InputError
from attrlens.text.segment import char_segments, segment

TEXT = st.text(
    alphabet=st.sampled_from(list("ab cé.!?\n,;—😀  \tx")), min_size=0, max_size=60
)


def _flat(segs):
    return sorted(sp for feat in segs for sp in feat)


@settings(max_examples=200, deadline=None)
@given(TEXT, st.sampled_from(["word", "sentence", "message"]))
def test_features_cover_region_exactly_and_never_overlap(text, gran):
    region = (0, len(text))
    if not text.strip():
        assert char_segments(text, [region], gran) == []
        return
    spans = _flat(char_segments(text, [region], gran))
    # disjoint and contiguous: each span starts where the previous ended
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a1, b1), (a2, b2) in itertools.pairwise(spans):
        assert b1 == a2 and a2 < b2
    # keeping every feature reproduces the input
    assert "".join(text[a:b] for a, b in spans) == text


@settings(max_examples=100, deadline=None)
@given(TEXT, TEXT)
def test_two_regions_with_frozen_text_between(a, b):
    text = a + "<|frozen|>" + b
    regions = [(0, len(a)), (len(a) + 10, len(text))]
    spans = _flat(char_segments(text, regions, "word"))
    covered = "".join(text[s:e] for s, e in spans)
    expected = "".join(text[s:e] for s, e in regions if text[s:e].strip())
    assert covered == expected
    assert all(not (s < len(a) + 10 and e > len(a)) for s, e in spans)  # frozen never a feature


def test_word_features_carry_leading_whitespace_and_punctuation():
    text = "  Hello  world, this is.  ?!  "
    segs = [text[a:b] for (sp,) in char_segments(text, [(0, len(text))], "word") for a, b in [sp]]
    assert segs == ["  Hello", "  world,", " this", " is.", "  ?!  "]


def test_sentences_and_unicode():
    text = "Première phrase. Deuxième… troisième!\n\nQuatre? 😀 fin"
    segs = [text[a:b] for (sp,) in char_segments(text, [(0, len(text))], "sentence") for a, b in [sp]]
    # (an end mark before a lower-case word ends no sentence: "Deuxième… troisième!")
    assert segs == ["Première phrase.", " Deuxième… troisième!", "\n\nQuatre?", " 😀 fin"]
    # full-width end marks end a sentence without a space after them (Chinese, Japanese;
    # before, such a text was one sentence); a Latin full stop still needs the space
    # ("3.14", "e.g.x")
    text = "東京は日本の首都です。大阪も大きい！「本当？」そうです。 pi is 3.14 e.g.x ok."
    segs = [text[a:b] for (sp,) in char_segments(text, [(0, len(text))], "sentence")
            for a, b in [sp]]
    assert segs == ["東京は日本の首都です。", "大阪も大きい！", "「本当？」", "そうです。",
                    " pi is 3.14 e.g.x ok."]


def test_span_granularity_validates_spans():
    text = "alpha beta gamma"
    segs = char_segments(text, [(0, len(text))], "span", spans=[(6, 10), (0, 5)])
    assert segs == [((0, 5),), ((6, 10),)]
    with pytest.raises(InputError, match="overlap"):
        char_segments(text, [(0, len(text))], "span", spans=[(0, 7), (6, 10)])
    with pytest.raises(InputError, match="outside"):
        char_segments(text, [(0, len(text))], "span", spans=[(0, 99)])


def test_unknown_granularity_suggests_closest():
    with pytest.raises(InputError, match="Did you mean 'word'"):
        char_segments("a b", [(0, 3)], "words")


def test_segment_assigns_tokens_with_model_offsets(tiny_model):
    text = "The capital  of France?"
    ids, offsets = tiny_model.tokenize(text)
    fs = segment(text, [(0, len(text))], offsets, "word")
    assert fs.labels == ["The", "capital", "of", "France?"]
    owned = sorted(t for f in fs for t in f.tokens)
    assert owned == list(range(len(ids)))  # every token of the region belongs to one feature
    # token granularity: every non-blank token is its own feature
    ft = segment(text, [(0, len(text))], offsets, "token")
    assert sum(len(f.tokens) for f in ft) == len(ids)
    assert len(ft) >= len(fs)


def test_blank_only_prompt_has_no_features(tiny_model):
    text = "   \n "
    _, offsets = tiny_model.tokenize(text)
    with pytest.raises(InputError, match="no features"):
        segment(text, [(0, len(text))], offsets, "word")


def test_span_features_are_the_text_of_their_whole_tokens():
    """A span ending inside a token is masked by the whole token: its spans and label say
    so (before, they kept the user's offsets while more text was masked); spans sharing a
    token cannot be masked apart and are refused (before, silently merged)."""
    text = "unbelievable things"
    offsets = [(0, 2), (2, 8), (8, 12), (12, 19)]  # "un" "believ" "able" " things"
    fs = segment(text, [(0, len(text))], offsets, "span", spans=[(0, 4), (13, 19)])
    assert [f.spans for f in fs] == [((0, 8),), ((12, 19),)]
    assert fs.labels == ["unbeliev", "things"] and [f.tokens for f in fs] == [(0, 1), (3,)]
    with pytest.raises(InputError, match=r"\(0, 4\) and \(5, 12\) both fall in the token 'believ' at \(2, 8\)"):
        segment(text, [(0, len(text))], offsets, "span", spans=[(0, 4), (5, 12)])
    with pytest.raises(InputError, match=r"span \(3, 5\) 'el' lies inside tokens"):
        segment(text, [(0, len(text))], offsets, "span", spans=[(0, 3), (3, 5), (5, 9)])


def test_token_features_keep_the_bytes_of_one_character_together():
    """Byte-level BPE splits an emoji or accented letter over tokens sharing its character
    (offsets (6, 8), (7, 8), (7, 8) for ' 🍕'): the first made a blank feature ' ' and the
    others a feature holding part of the character's bytes."""
    text = "I love 🍕 so"
    offsets = [(0, 1), (1, 6), (6, 8), (7, 8), (7, 8), (8, 11)]
    fs = segment(text, [(0, len(text))], offsets, "token")
    assert fs.labels == ["I", "love", "🍕", "so"]
    assert [f.spans for f in fs] == [((0, 1),), ((1, 6),), ((6, 8),), ((8, 11),)]
    assert [f.tokens for f in fs] == [(0,), (1,), (2, 3, 4), (5,)]


def test_a_blank_token_joins_the_token_after_it():
    """'price: 5' tokenized as 'price', ':', 'Ġ', '5': the space went to ':'; as the module
    says, whitespace belongs to the feature that follows it."""
    text = "price: 5\n\nok"
    offsets = [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10), (10, 12)]
    fs = segment(text, [(0, len(text))], offsets, "token")
    assert fs.labels == ["price", ":", "5", "ok"]
    assert [f.spans for f in fs] == [((0, 5),), ((5, 6),), ((6, 8),), ((8, 12),)]
    assert [f.tokens for f in fs] == [(0,), (1,), (2, 3), (4, 5, 6)]


def test_snap_spans_moves_a_shared_token_to_the_span_holding_more_of_it():
    """A data set's sentence split cuts inside a token ('!",' of 'Hi!", now'): with
    snap_spans the token stays with the span holding more of it and the neighbour's boundary
    moves to the token's edge; a span lying inside its neighbour's token ('.' of 'I...')
    joins that feature; what moved is recorded. Without it (spans a user wrote) both are
    refused as before."""
    text = 'Say "Hi!", now go. I...A.'
    # "Say" ' "' "Hi" '!",' " now" " go" "." " I" "..." "A" "."
    offsets = [(0, 3), (3, 5), (5, 7), (7, 10), (10, 14), (14, 17), (17, 18), (18, 20),
               (20, 23), (23, 24), (24, 25)]
    spans = [(0, 8), (8, 18), (18, 22), (22, 23), (23, 25)]
    region = [(0, len(text))]
    fs = segment(text, region, offsets, "span", spans=spans, shift=0, snap_spans=True)
    # '!",' has 1 char in span 0 and 2 in span 1: span 1 gets it, span 0 ends before it;
    # '...' has 2 chars in span 2 and 1 in span 3 ('.'): span 3 joins span 2
    assert [f.spans for f in fs] == [((0, 7),), ((7, 18),), ((18, 23),), ((23, 25),)]
    assert fs.labels == ['Say "Hi', '!", now go.', "I...", "A."]
    assert [f.tokens for f in fs] == [(0, 1, 2), (3, 4, 5, 6), (7, 8), (9, 10)]
    assert fs.snapped == {
        "moved": [{"spans": [0, 1], "token": '!",', "token_at": [7, 10], "to": 1}],
        "merged": [{"span": 3, "into": 2}],
        "feature_of_span": [0, 1, 2, 2, 3]}
    # offsets in the record are the given text's (less the shift of a rendered prompt)
    pre = "<s>"
    fs2 = segment(pre + text, [(3, 3 + len(text))], [(0, 3)] + [(a + 3, b + 3) for a, b in offsets],
                  "span", spans=[(a + 3, b + 3) for a, b in spans], shift=3, snap_spans=True)
    assert fs2.snapped["moved"][0]["token_at"] == [7, 10]
    # the other way round: the shared token holds more of the first span
    fs3 = segment("ab cd", region, [(0, 2), (2, 5)], "span", spans=[(0, 4), (4, 5)],
                  snap_spans=True)
    assert [f.spans for f in fs3] == [((0, 5),)] and fs3.snapped["merged"] == [
        {"span": 1, "into": 0}]
    # spans a user wrote are refused as given
    with pytest.raises(InputError, match="both fall in the token"):
        segment(text, region, offsets, "span", spans=spans[:2])
    with pytest.raises(InputError, match="lies inside tokens"):
        segment(text, region, offsets, "span", spans=spans[2:])
    assert segment(text, region, offsets, "span", spans=[(0, 7), (7, 18)]).snapped is None
    # a span whose token reaches outside the explainable text is refused either way
    with pytest.raises(InputError, match="reaches outside"):
        segment("xab", [(1, 3)], [(0, 2), (2, 3)], "span", spans=[(1, 2), (2, 3)],
                snap_spans=True)


@pytest.mark.parametrize(("text", "want"), [
    ("Dr. Smith met Mr. Jones at 5 p.m. on Friday. They talked.",
     ["Dr. Smith met Mr. Jones at 5 p.m. on Friday.", " They talked."]),
    ("Fruits, e.g. apples, are sweet. It costs approx. two dollars.",
     ["Fruits, e.g. apples, are sweet.", " It costs approx. two dollars."]),
    ("He moved to the U.S.A. He liked it. J. R. R. Tolkien wrote it.",
     ["He moved to the U.S.A.", " He liked it.", " J. R. R. Tolkien wrote it."]),
    ("Pears, etc. The end. See Fig. 3 and No. 5. He said no. Fine!",
     ["Pears, etc.", " The end.", " See Fig. 3 and No. 5.", " He said no.", " Fine!"]),
])
def test_a_full_stop_after_an_abbreviation_does_not_end_the_sentence(text, want):
    """Every full stop followed by a space ended a sentence: "Dr. Smith" and "5 p.m. on
    Friday" were cut into pieces that are not sentences."""
    segs = [text[a:b] for (sp,) in char_segments(text, [(0, len(text))], "sentence")
            for a, b in [sp]]
    assert segs == want


def test_a_blank_a_template_token_holds_is_not_claimed_by_the_feature():
    """SmolLM2's chat template tokenizes "user\\n  Hello" as "user", "\\n ", " Hello": the
    frozen "\\n " holds the content's first blank, yet the first word's span began there
    ("  Hello"): a blank the feature claimed and masking it left in place."""
    text = "user\n  Hello there.  Bye \n"
    region = (5, 25)  # "  Hello there.  Bye "
    # "user" | "\n " (frozen, into the region) | " Hello" | " there" | "." | " " | " Bye" |
    # " \n" (frozen, from the region's last blank on)
    offsets = [(0, 4), (4, 6), (6, 12), (12, 18), (18, 19), (19, 20), (20, 24), (24, 26)]
    for gran, want in (("word", [" Hello", " there.", "  Bye"]),
                       ("sentence", [" Hello there.", "  Bye"]),
                       ("message", [" Hello there.  Bye"])):
        fs = segment(text, [region], offsets, gran)
        got = [text[a:b] for f in fs for a, b in f.spans]
        assert got == want, gran
        # every char a feature claims lies in a token it masks
        for f in fs:
            toks = [offsets[t] for t in f.tokens]
            assert all(any(x <= c < y for x, y in toks) for a, b in f.spans
                       for c in range(a, b)), gran


def test_user_spans_out_of_text_order_are_refused_not_reordered(tiny_model):
    """Spans given out of text order were sorted silently: feature 0 was the user's second
    span, and scores zipped with the given spans went to the wrong ones. A program's spans
    (snap_spans, e.g. a data set's sentences) are still put in text order."""
    import attrlens

    with pytest.raises(InputError, match=re.escape("(0, 3) comes after (8, 10); sort them")):
        attrlens.explain("The sky is blue", model=tiny_model, granularity="span",
                         spans=[(8, 10), (0, 3)], method="loo", output=" x")
    r = attrlens.explain("The sky is blue", model=tiny_model, granularity="span",
                         spans=[(0, 3), (8, 10)], method="loo", output=" x")
    assert r.labels == ["The", "is"]
    text = "The sky is blue"
    _, offsets = tiny_model.tokenize(text)
    fs = segment(text, [(0, len(text))], offsets, "span", spans=[(8, 10), (0, 3)],
                 snap_spans=True)
    assert fs.labels == ["The", "is"]


def test_marks_stay_with_their_letter_and_more_scripts_end_sentences(tiny_model):
    """Token features split a combining accent (e + U+0301) or a Devanagari vowel sign into a
    feature of its own (masking the accent without its letter); sentences did not end at
    the Arabic question mark or the Devanagari danda."""
    import unicodedata

    for text in ("cafe\u0301 ok", "यह अच्छा है। वह भी।"):
        _, offsets = tiny_model.tokenize(text)
        fs = segment(text, [(0, len(text))], offsets, "token")
        for f in fs:
            (a, _b), = f.spans[:1]
            assert not unicodedata.category(text[a]).startswith("M"), (text, fs.labels)
        assert "".join(fs.labels).replace(" ", "") == text.replace(" ", "")
    for text, want in (("كيف حالك؟ أنا بخير.", ["كيف حالك؟", "أنا بخير."]),
                       ("यह अच्छा है। वह भी।", ["यह अच्छा है।", "वह भी।"])):
        _, offsets = tiny_model.tokenize(text)
        assert segment(text, [(0, len(text))], offsets, "sentence").labels == want


def _sentences(text: str) -> list[str]:
    return [text[a:b] for (sp,) in char_segments(text, [(0, len(text))], "sentence")
            for a, b in [sp]]


@pytest.mark.parametrize(("text", "want"), [
    # a list number is no sentence of its own (it was: "1." scored as a feature)
    ("1. Preheat the oven.\n2. Bake the cake.", ["1. Preheat the oven.", "\n2. Bake the cake."]),
    ("Steps: 1. Open it. 2. Close it.", ["Steps: 1. Open it.", " 2. Close it."]),
    ("I counted to 3. Then I stopped.", ["I counted to 3.", " Then I stopped."]),
    ("See No. 5. He left.", ["See No. 5.", " He left."]),
    # no end mark ends a sentence before a lower-case word (only a full stop did)
    ('"Stop!" she cried. He stopped.', ['"Stop!" she cried.', " He stopped."]),
    ('He asked "why?" and left.', ['He asked "why?" and left.']),
    ("I was thinking... maybe not.", ["I was thinking... maybe not."]),
    ("Really? Yes.", ["Really?", " Yes."]),
])
def test_sentence_ends_a_reader_would_agree_with(text, want):
    assert _sentences(text) == want


def test_a_line_break_starts_the_sentence_it_opens(tiny_model):
    """The break went to the sentence before it while its token ("\\n   ") went to the one
    after: masking a line of code deleted the break before it on the token route, not on
    the text route. Every sentence's spans now hold exactly its tokens' characters."""
    text = "def f(x):\n    return x\nprint(f(1))\n\n  - bullet one\n  - bullet two"
    assert _sentences(text) == ["def f(x):", "\n    return x", "\nprint(f(1))",
                                "\n\n  - bullet one", "\n  - bullet two"]
    _, offsets = tiny_model.tokenize(text)
    fs = segment(text, [(0, len(text))], offsets, "sentence")
    for f in fs:
        chars = {i for a, b in f.spans for i in range(a, b)}
        covered = {i for t in f.tokens for i in range(*offsets[t])}
        assert covered == chars, (f.label, [text[slice(*offsets[t])] for t in f.tokens])


def test_chinese_and_japanese_words_are_not_one_feature_per_paragraph(tiny_model):
    """Words were runs of non-space characters: a Chinese paragraph was one word feature,
    coarser than its sentences."""
    def words(t):
        return [t[a:b] for (sp,) in char_segments(t, [(0, len(t))], "word") for a, b in [sp]]

    assert words("我爱北京。今天好！") == ["我", "爱", "北", "京。", "今", "天", "好！"]
    assert words("Hello世界abc мир") == ["Hello", "世", "界", "abc", " мир"]
    assert words("これはペン") == ["こ", "れ", "は", "ペ", "ン"]
    text = "我爱北京天安门。今天天气很好！"
    _, offsets = tiny_model.tokenize(text)
    fs = segment(text, [(0, len(text))], offsets, "word")
    # characters that share a token are one feature; none crosses the sentence end
    assert 2 <= len(fs) <= len(text)
    assert "".join(fs.labels) == text
    assert not any("。" in lab[:-1] for lab in fs.labels)


@pytest.mark.parametrize("cluster", [
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: three emoji joined by ZWJs
    "\U0001f44d\U0001f3fd",  # thumbs up, medium skin tone
    "\U0001f1eb\U0001f1f7",  # the flag of France (two regional indicators)
    "\u2764\ufe0f",  # heart + emoji presentation selector
    "e\u0301",  # e + combining acute
])
def test_token_features_never_split_a_character_cluster(tiny_model, cluster):
    """A zero-width joiner was a feature with an invisible label, and a skin tone or half
    a flag could be masked on its own."""
    text = f"Hi {cluster} there {cluster}{cluster}"
    _, offsets = tiny_model.tokenize(text)
    segs = [sp for (sp,) in char_segments(text, [(0, len(text))], "token", offsets=offsets)]
    bounds = {a for a, _ in segs} | {b for _, b in segs}
    starts = [i for i in range(len(text)) if text.startswith(cluster, i)]
    assert len(starts) == 3
    for i in starts:
        assert not any(i < c < i + len(cluster) for c in bounds), (cluster, [
            text[a:b] for a, b in segs])
