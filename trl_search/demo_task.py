"""The learning demo's task: a seeded world of invented lands, an encyclopedia about them, and questions.

Every land has four attributes (capital, river, founder, highest mountain) whose values are invented names used
nowhere else, so an answer cannot be guessed: it has to be found by searching for the land and copied from its
passage. The corpus also holds distractor passages that repeat the questions' wording ("What is the capital of ...")
without naming any land, so a lazy query made of the question's words retrieves them instead of the answer.

Train and held-out questions are about disjoint lands. `demonstration` writes the trajectories of an imperfect
teacher (searching well, searching with a lazy query, or guessing without searching) for the supervised warm start.

Example:
    >>> world = make_world(seed=0, num_train_lands=8, num_test_lands=4)
    >>> question = world.test_questions[0]
    >>> question["golden_answers"][0] in world.passage_of(question["land"], question["attribute"])["contents"]
    True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .demo_world import _NameMaker


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a land: how the question asks for it, how the passage states it, and the lazy query
    a careless searcher would send (the question's wording without the land's name)."""

    name: str
    question: str  # with {land}
    sentence: str  # with {land} and {value}, the value last
    lazy_query: str

    def good_query(self, land: str) -> str:
        """The query of a careful searcher: the attribute and the land's name."""
        return f"{self.lazy_query} {land}"


ATTRIBUTES = (
    Attribute("capital", "What is the capital of {land}?", "The capital of {land} is {value}.", "capital"),
    Attribute(
        "river", "Which river flows through {land}?", "The river that flows through {land} is {value}.", "river"
    ),
    Attribute("founder", "Who founded {land}?", "{land} was founded by {value}.", "founded"),
    Attribute(
        "mountain", "What is the highest mountain of {land}?", "The highest mountain of {land} is {value}.", "mountain"
    ),
)

# Distractors: the questions' own words, many times over, and never a land's name or an answer.
_DISTRACTOR_TEXTS = {
    "capital": [
        "What is the capital of a land? The capital is the town where its council meets, and every capital keeps "
        "the archive of the land.",
        "A capital of the plains is walled. Travellers ask what the capital of each land is before they set out.",
    ],
    "river": [
        "Which river flows through a land decides its trade. A river that flows through many lands is called a "
        "great river.",
        "Rivers flow through the plains in spring. Boatmen know which river flows through which valley.",
    ],
    "founder": [
        "Who founded the lands? Old songs say that each land was founded by a wanderer, and the founder was buried "
        "by the gate.",
        "The founded lands keep a list of who founded them; a founder is honoured each year.",
    ],
    "mountain": [
        "What is the highest mountain of a land? Surveyors measure every mountain, and the highest mountain is "
        "drawn in red on maps.",
        "A mountain of the north is high and cold. The highest mountain of the plains is hardly a hill.",
    ],
}

LAND_WORDS, NAME_WORDS = 30, 60  # word pools of land names and of answers (disjoint)
PROMPT_TEMPLATE = "Question: {question}\n"


@dataclass
class Land:
    name: str
    values: dict[str, str]  # attribute name -> invented answer


@dataclass
class World:
    """The generated world: lands split into train and held-out, the corpus rows and the question rows.

    Question rows are FlashRAG-style (`id`, `question`, `golden_answers`) plus `land` and `attribute`.
    """

    seed: int
    train_lands: list[Land]
    test_lands: list[Land]
    corpus: list[dict]
    train_questions: list[dict]
    test_questions: list[dict]
    answer_pool: list[str] = field(default_factory=list)  # train answers, what a guessing teacher picks from

    def passage_of(self, land: str, attribute: str) -> dict:
        """The corpus row that states `attribute` of `land`.

        Example:
            >>> world = make_world(seed=0, num_train_lands=2, num_test_lands=1)
            >>> land = world.train_lands[0]
            >>> world.passage_of(land.name, "river")["contents"].endswith(land.values["river"] + ".")
            True
        """
        sentence = next(a.sentence for a in ATTRIBUTES if a.name == attribute)
        land_row = next(item for item in self.train_lands + self.test_lands if item.name == land)
        contents = f'"{land}"\n' + sentence.format(land=land, value=land_row.values[attribute])
        return next(row for row in self.corpus if row["contents"] == contents)

    def texts(self) -> list[str]:
        """All of the world's text (corpus, questions, prompts), to train a tokenizer on."""
        questions = self.train_questions + self.test_questions
        return [row["contents"] for row in self.corpus] + [make_prompt(row["question"]) for row in questions]


def _land_passages(land: Land) -> list[str]:
    """One short passage per fact, titled with the land's name; the value ends the passage."""
    return [
        f'"{land.name}"\n' + attribute.sentence.format(land=land.name, value=land.values[attribute.name])
        for attribute in ATTRIBUTES
    ]


def _questions(lands: list[Land], split: str) -> list[dict]:
    rows = []
    for land in lands:
        for attribute in ATTRIBUTES:
            rows.append(
                {
                    "id": f"{split}_{len(rows)}",
                    "question": attribute.question.format(land=land.name),
                    "golden_answers": [land.values[attribute.name]],
                    "land": land.name,
                    "attribute": attribute.name,
                }
            )
    return rows


def _unique_pairs(pool: list[str], count: int, rng: random.Random) -> list[str]:
    if count > len(pool) * (len(pool) - 1) // 2:
        raise ValueError(f"Cannot make {count} distinct names from {len(pool)} words.")
    pairs: dict[frozenset, str] = {}  # "Vor Lak" and "Lak Vor" would be the same query to BM25: keep one
    while len(pairs) < count:
        first, second = rng.sample(pool, 2)
        pairs.setdefault(frozenset((first, second)), f"{first} {second}")
    return list(pairs.values())


def make_world(seed: int = 0, num_train_lands: int = 150, num_test_lands: int = 40) -> World:
    """Generates the world (deterministic for a seed): lands, corpus (one passage per land plus distractors) and
    questions (one per land and attribute), train and held-out about disjoint lands.

    Example:
        >>> world = make_world(seed=1, num_train_lands=10, num_test_lands=5)
        >>> len(world.train_questions), len(world.test_questions)
        (40, 20)
        >>> world.train_questions[0]["question"].endswith("?")
        True
    """
    rng = random.Random(seed)
    words = _NameMaker(rng)
    # Names are two invented words. Every word recurs across many lands (train and held-out alike), so a tiny model
    # meets every token in training, while each full name stays unique: an answer is still unguessable.
    land_names = _unique_pairs([words.word(1) for _ in range(LAND_WORDS)], num_train_lands + num_test_lands, rng)
    values = _unique_pairs([words.word(1) for _ in range(NAME_WORDS)], len(land_names) * len(ATTRIBUTES), rng)
    lands = [Land(name, {attribute.name: values.pop() for attribute in ATTRIBUTES}) for name in land_names]
    train_lands, test_lands = lands[:num_train_lands], lands[num_train_lands:]
    passages = [passage for land in lands for passage in _land_passages(land)]
    passages += [f'"{name.capitalize()}"\n{text}' for name, texts in _DISTRACTOR_TEXTS.items() for text in texts]
    rng.shuffle(passages)
    corpus = [{"id": str(index), "contents": contents} for index, contents in enumerate(passages)]
    train_questions = _questions(train_lands, "train")
    rng.shuffle(train_questions)
    return World(
        seed=seed,
        train_lands=train_lands,
        test_lands=test_lands,
        corpus=corpus,
        train_questions=train_questions,
        test_questions=_questions(test_lands, "test"),
        answer_pool=sorted({value for land in train_lands for value in land.values.values()}),
    )


def make_prompt(question: str) -> str:
    """The demo's prompt: short on purpose, so that a tiny model trains fast.

    Example:
        >>> make_prompt("Who founded Vorlak?")
        'Question: Who founded Vorlak?\\n'
    """
    return PROMPT_TEMPLATE.replace("{question}", question)


# --- The imperfect teacher -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSkill:
    """How often the teacher searches for the land itself, per attribute; otherwise it searches with the lazy query
    (with probability `lazy_share` of the rest) or guesses an answer without searching.

    The default is good at capitals and rivers and poor at founders and mountains, so that the warm-started policy is
    right on about half of the questions and RL has something to learn.
    """

    good_search: dict[str, float] = field(
        default_factory=lambda: {"capital": 0.9, "river": 0.9, "founder": 0.25, "mountain": 0.25}
    )
    lazy_share: float = 0.6


@dataclass
class Demonstration:
    """One teacher trajectory as segments `(kind, text)`: `"policy"` text is what the model writes, `"observation"`
    text is the body of an `<information>` block (the rendered passages), injected by the rollout."""

    question: dict
    kind: str  # good | lazy | guess
    segments: list[tuple[str, str]]


def teacher_action(question: dict, skill: TeacherSkill, rng: random.Random) -> tuple[str, str | None]:
    """Draws what the teacher does: (`"good"`, good query), (`"lazy"`, lazy query) or (`"guess"`, None).

    Example:
        >>> q = {"land": "Vor Lak", "attribute": "capital"}
        >>> teacher_action(q, TeacherSkill(good_search={"capital": 1.0}), random.Random(0))
        ('good', 'capital Vor Lak')
    """
    draw = rng.random()
    good = skill.good_search.get(question["attribute"], 0.0)
    attribute = next(a for a in ATTRIBUTES if a.name == question["attribute"])
    if draw < good:
        return "good", attribute.good_query(question["land"])
    if draw < good + (1 - good) * skill.lazy_share:
        return "lazy", attribute.lazy_query
    return "guess", None


def read_answer(passages: list, attribute: str) -> str | None:
    """What a reader copies from retrieved passages: the value in the first passage that states `attribute`.

    Example:
        >>> from trl_search.retrievers import Passage
        >>> read_answer([Passage("0", "Vor Lak", "The capital of Vor Lak is Zum Bro.")], "capital")
        'Zum Bro'
    """
    sentence = next(a.sentence for a in ATTRIBUTES if a.name == attribute)
    pattern = re.escape(sentence).replace(re.escape("{land}"), ".+?").replace(re.escape("{value}"), "(.+)")
    for passage in passages:
        match = re.fullmatch(pattern, passage.text)
        if match:
            return match.group(1)
    return None


def demonstration(
    question: dict, retriever, render_passages, skill: TeacherSkill, answer_pool: list[str], rng, top_k: int = 3
) -> Demonstration:
    """Writes one teacher trajectory in the tags protocol, with the real retriever's passages as the observation.

    `render_passages(passages) -> str` must render the observation body as the rollout does.

    Example:
        >>> world = make_world(seed=0, num_train_lands=4, num_test_lands=1)
        >>> from trl_search.retrievers import BM25Retriever
        >>> from trl_search.protocols import TagsProtocol
        >>> retriever = BM25Retriever.build(world.corpus, backend="numpy")
        >>> demo = demonstration(world.train_questions[0], retriever, TagsProtocol().render_passages,
        ...                      TeacherSkill(good_search={}), world.answer_pool, random.Random(0))
        >>> demo.kind in ("lazy", "guess")
        True
    """
    kind, query = teacher_action(question, skill, rng)
    if kind == "guess":
        return Demonstration(question, kind, [("policy", f"<answer> {rng.choice(answer_pool)} </answer>")])
    passages = retriever.search([query], k=top_k)[0]
    answer = read_answer(passages, question["attribute"]) or rng.choice(answer_pool)
    segments = [
        ("policy", f"<search> {query} </search>"),
        ("observation", render_passages(passages)),
        ("policy", f"<answer> {answer} </answer>"),
    ]
    return Demonstration(question, kind, segments)
