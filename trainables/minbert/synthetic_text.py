"""What the synthetic data set says: seeded generators of SST, Quora and STS examples.

Each generator takes a `random.Random` and returns one example, texts then label; see
synthetic.py for what signal each task carries and how the files are written.
"""

from __future__ import annotations

import random

__all__ = ["para_example", "sst_example", "sts_example"]

# ---------------------------------------------------------------------------------------------
# SST: graded sentiment

_SUBJECTS = [
    "the film",
    "this movie",
    "the story",
    "the script",
    "the performances",
    "the director 's latest",
    "the soundtrack",
    "the final act",
    "the dialogue",
    "the cast",
    "this picture",
    "the plot",
    "the screenplay",
    "the ending",
    "the lead performance",
    "this comedy",
    "the thriller",
    "the documentary",
]
_GRADED = [
    [
        "awful",
        "dreadful",
        "terrible",
        "unwatchable",
        "painful",
        "insufferable",
        "abysmal",
        "horrendous",
        "atrocious",
        "miserable",
    ],
    [
        "dull",
        "tedious",
        "uneven",
        "forgettable",
        "flat",
        "clumsy",
        "tiresome",
        "sluggish",
        "bland",
        "lackluster",
    ],
    [
        "ordinary",
        "conventional",
        "modest",
        "plain",
        "standard",
        "typical",
        "average",
        "middling",
        "routine",
        "unassuming",
    ],
    [
        "enjoyable",
        "pleasant",
        "charming",
        "likable",
        "engaging",
        "solid",
        "amusing",
        "entertaining",
        "agreeable",
        "warm",
    ],
    [
        "brilliant",
        "superb",
        "wonderful",
        "masterful",
        "stunning",
        "extraordinary",
        "magnificent",
        "unforgettable",
        "dazzling",
        "exhilarating",
    ],
]
_ADVERBS = ["rather", "quite", "genuinely", "mostly", "consistently", "surprisingly"]
_OPENERS = [
    "",
    "",
    "",
    "in the end , ",
    "frankly , ",
    "honestly , ",
    "all told , ",
    "for better or worse , ",
]
_TAILS = [
    "",
    "",
    "",
    " from start to finish",
    " for most of its running time",
    " in almost every scene",
    " , much like the trailer promised",
    " , and the audience seemed to agree",
]
_NEGATED = {4: 1, 3: 2, 1: 2, 0: 2}  # "not brilliant" reads somewhat negative, "not awful" neutral


def sst_example(rng: random.Random) -> tuple[str, int]:
    level = rng.randrange(5)
    subj = rng.choice(_SUBJECTS)
    adj = rng.choice(_GRADED[level])
    kind = rng.random()
    if kind < 0.12 and level in _NEGATED:  # negation: the label is that of "not <adj>"
        body, label = f"{subj} is not {adj}", _NEGATED[level]
    elif kind < 0.25:  # contrast: the final clause decides
        first = rng.choice(_GRADED[rng.choice([i for i in range(5) if abs(i - level) >= 2])])
        body, label = f"{subj} is {first} at first , but ultimately {adj}", level
    elif kind < 0.45:
        other = rng.choice([a for a in _GRADED[level] if a != adj])
        body, label = f"{subj} is {adj} and {other}", level
    elif kind < 0.6:
        body, label = f"{subj} is {rng.choice(_ADVERBS)} {adj}", level
    elif kind < 0.7:
        body, label = f"what a {adj} {rng.choice(['film', 'movie', 'ride', 'experience'])}", level
    elif kind < 0.8:
        body, label = f"i found {subj} {adj}", level
    else:
        body, label = f"{subj} feels {adj}", level
    sentence = f" {rng.choice(_OPENERS)}{body}{rng.choice(_TAILS)} ."
    return sentence[0] + sentence[1].upper() + sentence[2:], label  # SST rows start with a space


# ---------------------------------------------------------------------------------------------
# Quora: paraphrase questions

# topic -> (synonym sets of actions, objects)
_TOPICS: dict[str, tuple[list[list[str]], list[str]]] = {
    "cooking": (
        [["cook", "make", "prepare"], ["bake", "make"], ["season", "flavor"]],
        ["rice", "bread", "a steak", "pasta", "vegetable soup", "pancakes"],
    ),
    "programming": (
        [
            ["learn", "study", "pick up"],
            ["master", "get really good at"],
            ["debug", "troubleshoot"],
        ],
        ["python", "javascript", "data structures", "machine learning", "sql"],
    ),
    "fitness": (
        [["build", "develop"], ["improve", "increase"], ["track", "measure"]],
        ["muscle", "stamina", "flexibility", "core strength", "my running speed"],
    ),
    "travel": (
        [["visit", "travel to", "go to"], ["explore", "tour"], ["plan a trip to"]],
        ["japan", "paris", "the alps", "new york", "iceland", "peru"],
    ),
    "finance": (
        [["save", "put aside"], ["invest", "put"], ["earn", "make"]],
        [
            "money for retirement",
            "money in index funds",
            "extra income online",
            "money as a student",
        ],
    ),
    "music": (
        [["learn", "learn to play"], ["practice", "rehearse"], ["tune", "adjust"]],
        ["the guitar", "the piano", "the violin", "the drums", "the ukulele"],
    ),
    "gardening": (
        [["grow", "plant", "cultivate"], ["water", "irrigate"], ["prune", "trim"]],
        ["tomatoes", "roses", "an apple tree", "herbs indoors", "a lawn"],
    ),
    "careers": (
        [["prepare for", "get ready for"], ["pass", "succeed in"], ["find", "land"]],
        ["a job interview", "a remote job", "an internship", "the bar exam"],
    ),
    "languages": (
        [["learn", "study"], ["improve", "get better at"], ["practice", "train"]],
        ["spanish", "german", "mandarin", "english pronunciation", "french grammar"],
    ),
    "health": (
        [["improve", "get better"], ["fix", "repair"], ["reduce", "lower"]],
        ["my sleep", "my posture", "my blood pressure", "stress at work"],
    ),
}
_HOW = [
    "How can I {a} {o}?",
    "How do I {a} {o}?",
    "What is the best way to {a} {o}?",
    "What are some good ways to {a} {o}?",
    "What should I do to {a} {o}?",
    "Is there an easy way to {a} {o}?",
]
_HOW_FAST = [
    "How can I {a} {o} quickly?",
    "What is the fastest way to {a} {o}?",
    "How do I {a} {o} in a short time?",
    "Quickly, how can I {a} {o}?",
]
_WHY_NOT = [
    "Why can't I {a} {o}?",
    "Why is it so hard to {a} {o}?",
    "Why do I fail to {a} {o}?",
    "Why is it impossible for me to {a} {o}?",
]
_WORDS = ["serendipity", "ennui", "schadenfreude", "hygge", "saudade", "wanderlust"]
_WORD_Q = [
    'What does "{w}" mean?',
    'What is the meaning of "{w}"?',
    'What is the meaning of the word "{w}"?',
    'Can someone explain the word "{w}"?',
]


def _question(rng: random.Random, topic: str, action: int, obj: int, style: list[str]) -> str:
    actions, objects = _TOPICS[topic]
    return rng.choice(style).format(a=rng.choice(actions[action]), o=objects[obj])


def para_example(rng: random.Random) -> tuple[str, str, int]:
    if rng.random() < 0.04:  # quoted words: exercises "" escaping in the files
        w = rng.choice(_WORDS)
        if rng.random() < 0.5:
            a, b = rng.sample(_WORD_Q, 2)
            return a.format(w=w), b.format(w=w), 1
        return (
            rng.choice(_WORD_Q).format(w=w),
            rng.choice(_WORD_Q).format(w=rng.choice([x for x in _WORDS if x != w])),
            0,
        )
    topic = rng.choice(sorted(_TOPICS))
    actions, objects = _TOPICS[topic]
    act, obj = rng.randrange(len(actions)), rng.randrange(len(objects))
    style = _HOW_FAST if rng.random() < 0.3 else _HOW
    first = _question(rng, topic, act, obj, style)
    kind = rng.random()
    if kind < 0.38:  # duplicate: synonyms, another template, sometimes the same style swapped
        second = _question(rng, topic, act, obj, style)
        for _ in range(5):
            if second != first:
                break
            second = _question(rng, topic, act, obj, style)
        return first, second, 1
    if kind < 0.55:  # another topic
        other = rng.choice([t for t in sorted(_TOPICS) if t != topic])
        o_act, o_obj = rng.randrange(len(_TOPICS[other][0])), rng.randrange(len(_TOPICS[other][1]))
        return first, _question(rng, other, o_act, o_obj, _HOW), 0
    if kind < 0.72:  # same topic and action, another object: high word overlap
        o_obj = rng.choice([i for i in range(len(objects)) if i != obj])
        return first, _question(rng, topic, act, o_obj, style), 0
    if kind < 0.86:  # same object, another action
        o_act = rng.choice([i for i in range(len(actions)) if i != act])
        return first, _question(rng, topic, o_act, obj, style), 0
    return first, _question(rng, topic, act, obj, _WHY_NOT), 0  # negation


# ---------------------------------------------------------------------------------------------
# STS: scene similarity

_AGENTS = [
    ["a man", "a guy"],
    ["a woman", "a lady"],
    ["a child", "a kid"],
    ["a dog", "a puppy"],
    ["two people", "a couple"],
    ["an old man", "an elderly man"],
    ["a girl", "a young girl"],
    ["a boy", "a young boy"],
    ["a cat", "a kitten"],
]
_ACTIONS = [
    (["playing", "strumming"], ["a guitar", "a ukulele", "a banjo"]),
    (["playing"], ["the piano", "the drums", "a flute"]),
    (["eating", "having"], ["an apple", "a sandwich", "some noodles", "a pizza"]),
    (["riding"], ["a bike", "a horse", "a skateboard", "a motorcycle"]),
    (["reading"], ["a book", "a newspaper", "a letter", "a magazine"]),
    (["cutting", "slicing"], ["an onion", "a tomato", "a potato", "some bread"]),
    (["kicking"], ["a ball", "a can", "a stone"]),
    (["carrying", "holding"], ["a box", "a bag", "a baby", "an umbrella"]),
]
_PLACES = [
    ["in the park", "at the park"],
    ["on the street", "on the road"],
    ["in the kitchen"],
    ["on a beach", "by the sea"],
    ["in a field", "on a meadow"],
    ["at home", "in the house"],
    ["on a stage"],
    ["in the snow"],
]
# level -> (low, high) of the similarity drawn for it
_STS_RANGES = {
    5: (4.6, 5.0),
    4: (3.6, 4.4),
    3: (2.6, 3.4),
    2: (1.6, 2.4),
    1: (0.6, 1.4),
    0: (0.0, 0.4),
}


def _scene(
    rng: random.Random, agent: int, action: int, obj: int, place: int, inverted: bool = False
) -> str:
    who = rng.choice(_AGENTS[agent])
    verbs, objects = _ACTIONS[action]
    what = f"{'are' if who.startswith('two') else 'is'} {rng.choice(verbs)} {objects[obj]}"
    where = rng.choice(_PLACES[place])
    text = f"{where}, {who} {what}" if inverted else f"{who} {what} {where}"
    return text[0].upper() + text[1:] + "."


def _other(rng: random.Random, n: int, current: int) -> int:
    return rng.choice([i for i in range(n) if i != current])


def sts_example(rng: random.Random) -> tuple[str, str, float]:
    agent, action = rng.randrange(len(_AGENTS)), rng.randrange(len(_ACTIONS))
    obj, place = rng.randrange(len(_ACTIONS[action][1])), rng.randrange(len(_PLACES))
    level = rng.randrange(6)
    first = _scene(rng, agent, action, obj, place)
    if level == 5:  # same scene, synonyms and word order
        second = _scene(rng, agent, action, obj, place, inverted=rng.random() < 0.5)
    elif level == 4:  # another place
        second = _scene(rng, agent, action, obj, _other(rng, len(_PLACES), place))
    elif level == 3:  # another object, or another agent
        if rng.random() < 0.5:
            second = _scene(rng, agent, action, _other(rng, len(_ACTIONS[action][1]), obj), place)
        else:
            second = _scene(rng, _other(rng, len(_AGENTS), agent), action, obj, place)
    elif level == 2:  # same agent and place, another activity
        o_action = _other(rng, len(_ACTIONS), action)
        second = _scene(rng, agent, o_action, rng.randrange(len(_ACTIONS[o_action][1])), place)
    elif level == 1:  # only the place in common
        o_action = _other(rng, len(_ACTIONS), action)
        second = _scene(
            rng,
            _other(rng, len(_AGENTS), agent),
            o_action,
            rng.randrange(len(_ACTIONS[o_action][1])),
            place,
        )
    else:  # nothing in common
        o_action = _other(rng, len(_ACTIONS), action)
        second = _scene(
            rng,
            _other(rng, len(_AGENTS), agent),
            o_action,
            rng.randrange(len(_ACTIONS[o_action][1])),
            _other(rng, len(_PLACES), place),
        )
    low, high = _STS_RANGES[level]
    return first, second, round(rng.uniform(low, high), 2)
