"""The toy world's word lists: every word here is exactly one token of the bundled tokenizer.

Words are plain lowercase/capitalised alphabetic strings, single punctuation characters, or
two-digit strings ``"00"``..``"99"`` (years are written as a century pair and a two-digit pair,
``"1732"`` -> ``"17"``, ``"32"``). ``ALL_WORDS`` fixes the token ids (specials first).
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK)

NAMES = _words(
    "Mary John Alice Bob Sarah David Emma James Laura Peter Anna Paul Kate Mark Lucy Tom Jane Sam "
    "Rose Adam Clara Daniel Ella Frank Grace Henry Iris Jack Julia Kevin Lily Leo Maria Nick Olivia "
    "Oscar Paula Ryan Sofia Victor Wendy Alan Beth Carl Diana Eric Fiona George Hannah Ian Joan Karl "
    "Lisa Martin Nora Owen Pam Ralph Susan Tim Uma Vera Walter Zoe Bella Chris Dora Ethan Flora Gavin "
    "Helen Ivan Jill Kyle Linda Mike Nina Omar Rita Simon Tina"
)

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "cooking": {
        "noun": _words("soup bread oven pan salt onion garlic butter flour recipe kitchen knife sauce pepper cheese spoon"),
        "verb": _words("bakes stirs chops boils tastes fries mixes seasons"),
        "adj": _words("spicy fresh crispy sweet salty warm tender creamy"),
    },
    "sailing": {
        "noun": _words("boat sail harbor wave anchor deck mast rope captain crew tide wind island compass hull storm"),
        "verb": _words("sails steers drifts anchors rows navigates docks tacks"),
        "adj": _words("coastal calm rough windy northern deep wooden stormy"),
    },
    "astronomy": {
        "noun": _words("star planet moon telescope orbit galaxy comet nebula sky eclipse asteroid meteor satellite crater lens observatory"),
        "verb": _words("orbits observes rotates shines measures tracks glows eclipses"),
        "adj": _words("distant bright cosmic faint lunar solar dark massive"),
    },
    "music": {
        "noun": _words("song guitar piano melody rhythm drum choir concert violin chord band note singer stage album tempo"),
        "verb": _words("plays sings composes tunes strums performs hums records"),
        "adj": _words("loud soft harmonic acoustic catchy melodic live slow"),
    },
    "medicine": {
        "noun": _words("doctor patient fever clinic vaccine nurse wound pill surgery symptom virus dose hospital bandage heart cure"),
        "verb": _words("heals treats examines prescribes diagnoses injects bandages monitors"),
        "adj": _words("sick chronic sterile medical acute healthy painful clinical"),
    },
    "farming": {
        "noun": _words("farm tractor wheat barn cow field harvest seed soil plow sheep orchard fence hay crop goat"),
        "verb": _words("plants harvests plows feeds waters milks grows herds"),
        "adj": _words("rural fertile muddy green ripe dry golden organic"),
    },
    "computing": {
        "noun": _words("computer server program code network memory disk compiler database keyboard screen bug kernel cache thread packet"),
        "verb": _words("compiles runs crashes installs debugs loads encrypts indexes"),
        "adj": _words("digital fast binary virtual remote parallel secure buggy"),
    },
    "sports": {
        "noun": _words("ball team goal coach player match stadium referee score league trophy runner racket arena helmet season"),
        "verb": _words("kicks scores throws wins trains tackles passes defends"),
        "adj": _words("athletic quick strong rival final famous young tired"),
    },
    "law": {
        "noun": _words("judge court lawyer trial verdict witness contract jury evidence crime appeal statute clerk defendant prison bail"),
        "verb": _words("sues argues testifies rules convicts appeals signs files"),
        "adj": _words("legal guilty innocent civil federal formal strict binding"),
    },
    "weather": {
        "noun": _words("rain cloud snow thunder fog frost breeze forecast lightning hail drizzle sunshine temperature flood rainbow climate"),
        "verb": _words("pours freezes melts blows clears rumbles drenches cools"),
        "adj": _words("cold humid foggy sunny icy cloudy mild rainy"),
    },
}
TOPIC_NAMES = tuple(TOPICS)

DETERMINERS = ("the", "a", "this", "that", "every", "some")
PREPOSITIONS = ("in", "near", "with", "under", "behind", "beside", "over", "after")
CONJUNCTIONS = ("and", "but", "while", "because")
ADVERBS = ("often", "never", "quickly", "slowly", "always", "rarely")
PRONOUNS = ("he", "she", "they", "it", "we")
GENERIC_VERBS = ("sees", "likes", "finds", "needs", "wants", "moves", "keeps", "shows")
PUNCTUATION = (".", ",", ":", "(", ")")

IOI_PLACES = ("store", "park", "school", "market", "station", "garden", "office", "beach", "library", "museum")
IOI_OBJECTS = ("book", "ring", "letter", "gift", "drink", "apple", "ticket", "key", "bag", "flower")
IOI_VERBS = ("gave", "handed", "passed", "sent", "showed", "brought")
IOI_FRAME_WORDS = ("When", "Then", "After", "went", "to", "the", "a", "had", "lunch", "at", "fun", "met", "decided", "give")

GT_NOUNS = ("war", "reign", "drought", "project", "expedition", "strike", "famine", "voyage", "dynasty", "campaign",
            "treaty", "pilgrimage", "rebellion", "journey", "plague", "festival")
GT_FRAME_WORDS = ("The", "lasted", "from", "year", "to", "the", "ran", "continued", "until")
TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))
CENTURIES = tuple(f"{c}" for c in range(11, 20))

DOCSTRING_ARGS = _words(
    "load size files last alpha beta gamma delta key value item items path name mode count index limit "
    "data text width height depth color shape scale weight offset start stop step seed rate level order "
    "source target query token ids config state context buffer label model output result user group "
    "node edge graph port host timeout retries verbose"
)
DOCSTRING_FUNCS = _words("run get set load save build parse check update reset apply fetch send open close merge")
DOCSTRING_FRAME_WORDS = ("def", "self", "param", "returns", "return", "None")

SENTENCE_WORDS = ("The", "A", "It", "They", "He", "She", "We")


def _ordered_unique(groups) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for word in group:
            seen.setdefault(word, None)
    return tuple(seen)


CONTENT_WORDS: tuple[str, ...] = _ordered_unique(
    [NAMES]
    + [words for topic in TOPICS.values() for words in topic.values()]
    + [DETERMINERS, PREPOSITIONS, CONJUNCTIONS, ADVERBS, PRONOUNS, GENERIC_VERBS, PUNCTUATION,
       IOI_PLACES, IOI_OBJECTS, IOI_VERBS, IOI_FRAME_WORDS, GT_NOUNS, GT_FRAME_WORDS, TWO_DIGITS,
       DOCSTRING_ARGS, DOCSTRING_FUNCS, DOCSTRING_FRAME_WORDS, SENTENCE_WORDS]
)
"""Every non-special word, in token-id order."""

ALL_WORDS: tuple[str, ...] = SPECIAL_TOKENS + CONTENT_WORDS
"""The whole vocabulary: token id = index in this tuple."""

WORD_ID: dict[str, int] = {word: i for i, word in enumerate(ALL_WORDS)}
"""Token id of every word (the bundled tokenizer's vocabulary)."""
