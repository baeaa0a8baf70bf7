"""The learning demo's task: a seeded world of invented lands, an encyclopedia about them, questions, and a teacher.

Every land has four attributes (capital, river, founder, highest mountain) whose values are invented two-word names
used nowhere else, so an answer cannot be guessed: it has to be found by searching and copied from a passage. Each
fact is one short passage, `The capital of <land> is <value>.`, titled with the land's name. Distractor passages
repeat the questions' wording without naming any land, so a lazy query (the question's words without the land)
retrieves no answer.

Questions come in two types:
- one-hop, `What is the capital of Vor Lak?`: search `capital Vor Lak`, copy the answer;
- two-hop, `Who founded the land whose river is Zum Bro?`: search `river Zum Bro`, read the land's name from that
  passage, search `founder <land>`, copy the answer. The second search depends on the first one's result.

Train, validation and held-out questions are about disjoint lands. `TeacherGenerator` plays an imperfect teacher
inside the real rollout (it reads the observations the rollout injects), so its demonstrations are tokenised exactly
as the policy's own trajectories are: it searches well for capitals and rivers, badly for founders and mountains,
and on two-hop questions it often stops after one search and answers the land's name.

Example:
    >>> world = make_world(seed=0, num_train_lands=8, num_dev_lands=2, num_test_lands=4)
    >>> question = world.test_questions[0]
    >>> question["golden_answers"][0] in world.passage_of(question["land"], question["attribute"])["contents"]
    True
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..sample_data.generate import _NameMaker


ONE_HOP, TWO_HOP = "one_hop", "two_hop"
QUESTION_TYPES = (ONE_HOP, TWO_HOP)


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a land: how a question asks for it, how its passage states it, the noun a careful query
    names it by, and the lazy query of a careless searcher (the question's words, no name). The two queries start
    with different words, so the choice between them is made before any name is written."""

    name: str
    question: str  # with {land}: a land's name, or "the land whose <noun> is <value>" in a two-hop question
    sentence: str  # with {land} and {value}; every sentence ends "... of {land} is {value}."
    noun: str
    lazy_query: str

    def query(self, subject: str) -> str:
        """The query of a careful searcher: the noun and the land's name (or the known value, for the first hop).

        Example:
            >>> ATTRIBUTES[0].query("Vor Lak")
            'capital Vor Lak'
        """
        return f"{self.noun} {subject}"


ATTRIBUTES = (
    Attribute(
        "capital",
        "What is the capital of {land}?",
        "The capital of {land} is {value}.",
        "capital",
        "what is the capital",
    ),
    Attribute(
        "river", "Which river flows through {land}?", "The river of {land} is {value}.", "river", "which river flows"
    ),
    Attribute("founder", "Who founded {land}?", "The founder of {land} is {value}.", "founder", "who founded"),
    Attribute(
        "mountain",
        "What is the highest mountain of {land}?",
        "The highest mountain of {land} is {value}.",
        "mountain",
        "what is the highest mountain",
    ),
)
ATTRIBUTE = {attribute.name: attribute for attribute in ATTRIBUTES}

# Distractors: the questions' and queries' own words, many times over, and never a land's name or an answer.
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
        "Who founded the lands? Old songs say that each land had a founder, and the founder was buried by the gate.",
        "The founded lands keep a list of who founded them; a founder is honoured each year.",
    ],
    "mountain": [
        "What is the highest mountain of a land? Surveyors measure every mountain, and the highest mountain is "
        "drawn in red on maps.",
        "A mountain of the north is high and cold. The highest mountain of the plains is hardly a hill.",
    ],
}

LAND_WORDS, NAME_WORDS = 30, 60  # word pools of land names and of answers (disjoint)
TWO_HOP_PER_LAND = 2
PROMPT_TEMPLATE = "Question: {question}\n"
_NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"
_FACT = re.compile(rf"of ({_NAME}) is ({_NAME})\.")  # what a reader finds in a passage: (land, value)
# A teacher's turn up to its first name: the action and the query's first word (tags or a Qwen2.5 tool call), or the
# answer's opening tag; a tool-call answer is the bare name, so nothing comes before it.
_BEFORE_NAME = re.compile(r'<answer>|<search> [a-z]+|<tool_call>\n\{"name": "search", "arguments": \{"query": "[a-z]+')
PROTOCOLS = ("tags", "tool_call")
TOOL_CALL_EOS = "<|im_end|>"  # Qwen2.5's end of turn: it closes every tool-call turn and the final answer


@dataclass
class Land:
    name: str
    values: dict[str, str]  # attribute name -> invented answer


@dataclass
class World:
    """The generated world: lands split into train, validation (dev) and held-out (test), the corpus and questions.

    Question rows are FlashRAG-style (`id`, `question`, `golden_answers`) plus `type` (`one_hop` or `two_hop`), `land`
    and `attribute` (what is asked), and for two-hop questions `bridge` (the attribute the question names the land by)
    and `bridge_value`.
    """

    seed: int
    train_lands: list[Land]
    dev_lands: list[Land]
    test_lands: list[Land]
    corpus: list[dict]
    train_questions: list[dict]
    dev_questions: list[dict]
    test_questions: list[dict]
    answer_pool: list[str] = field(default_factory=list)  # train answers, what a guessing teacher picks from

    @property
    def lands(self) -> list[Land]:
        return self.train_lands + self.dev_lands + self.test_lands

    def passage_of(self, land: str, attribute: str) -> dict:
        """The corpus row that states `attribute` of `land`.

        Example:
            >>> world = make_world(seed=0, num_train_lands=2, num_dev_lands=1, num_test_lands=1)
            >>> land = world.train_lands[0]
            >>> world.passage_of(land.name, "river")["contents"].endswith(land.values["river"] + ".")
            True
        """
        values = next(item for item in self.lands if item.name == land).values
        contents = _passage(land, ATTRIBUTE[attribute], values[attribute])
        return next(row for row in self.corpus if row["contents"] == contents)


def _passage(land: str, attribute: Attribute, value: str) -> str:
    # The title line is the bare name (no quotes, unlike wiki-18's): the name then tokenises the same in the title as
    # in questions, queries and sentences, and every passage gives the warm start practice at copying names.
    return f"{land}\n" + attribute.sentence.format(land=land, value=value)


def _questions(lands: list[Land], split: str, rng: random.Random) -> list[dict]:
    rows = []
    for land in lands:
        for attribute in ATTRIBUTES:
            rows.append(
                {
                    "id": f"{split}_{len(rows)}",
                    "question": attribute.question.format(land=land.name),
                    "golden_answers": [land.values[attribute.name]],
                    "type": ONE_HOP,
                    "land": land.name,
                    "attribute": attribute.name,
                    "bridge": None,
                    "bridge_value": None,
                }
            )
        pairs = [(bridge, target) for bridge in ATTRIBUTES for target in ATTRIBUTES if bridge is not target]
        for bridge, target in rng.sample(pairs, TWO_HOP_PER_LAND):
            value = land.values[bridge.name]
            rows.append(
                {
                    "id": f"{split}_{len(rows)}",
                    "question": target.question.format(land=f"the land whose {bridge.noun} is {value}"),
                    "golden_answers": [land.values[target.name]],
                    "type": TWO_HOP,
                    "land": land.name,
                    "attribute": target.name,
                    "bridge": bridge.name,
                    "bridge_value": value,
                }
            )
    return rows


def _unique_pairs(pool: list[str], count: int, rng: random.Random) -> list[str]:
    if count > len(pool) * (len(pool) - 1) // 2:
        raise ValueError(f"Cannot make {count} distinct names from {len(pool)} words; use fewer lands.")
    pairs: dict[frozenset, str] = {}  # "Vor Lak" and "Lak Vor" would be the same query to BM25: keep one
    while len(pairs) < count:
        first, second = rng.sample(pool, 2)
        pairs.setdefault(frozenset((first, second)), f"{first} {second}")
    return list(pairs.values())


def make_world(seed: int = 0, num_train_lands: int = 150, num_dev_lands: int = 20, num_test_lands: int = 40) -> World:
    """Generates the world (deterministic for a seed): lands, corpus (one passage per fact plus distractors) and
    questions (one one-hop question per land and attribute, two two-hop questions per land).

    Example:
        >>> world = make_world(seed=1, num_train_lands=10, num_dev_lands=2, num_test_lands=5)
        >>> len(world.train_questions), len(world.test_questions)
        (60, 30)
        >>> sorted({row["type"] for row in world.test_questions})
        ['one_hop', 'two_hop']
    """
    if min(num_train_lands, num_dev_lands, num_test_lands) < 1:
        raise ValueError("make_world needs at least one train, one dev and one test land.")
    rng = random.Random(seed)
    words = _NameMaker(rng)
    num_lands = num_train_lands + num_dev_lands + num_test_lands
    # Names are two invented words. Every word recurs across many lands (train and held-out alike), so a tiny model
    # meets every token in training, while each full name stays unique: an answer is still unguessable.
    land_names = _unique_pairs([words.word(1) for _ in range(LAND_WORDS)], num_lands, rng)
    values = _unique_pairs([words.word(1) for _ in range(NAME_WORDS)], num_lands * len(ATTRIBUTES), rng)
    lands = [Land(name, {attribute.name: values.pop() for attribute in ATTRIBUTES}) for name in land_names]
    train_lands = lands[:num_train_lands]
    dev_lands = lands[num_train_lands : num_train_lands + num_dev_lands]
    test_lands = lands[num_train_lands + num_dev_lands :]
    passages = [
        _passage(land.name, attribute, land.values[attribute.name]) for land in lands for attribute in ATTRIBUTES
    ]
    passages += [f"{name.capitalize()}\n{text}" for name, texts in _DISTRACTOR_TEXTS.items() for text in texts]
    rng.shuffle(passages)
    corpus = [{"id": str(index), "contents": contents} for index, contents in enumerate(passages)]
    train_questions = _questions(train_lands, "train", rng)
    rng.shuffle(train_questions)
    return World(
        seed=seed,
        train_lands=train_lands,
        dev_lands=dev_lands,
        test_lands=test_lands,
        corpus=corpus,
        train_questions=train_questions,
        dev_questions=_questions(dev_lands, "dev", rng),
        test_questions=_questions(test_lands, "test", rng),
        answer_pool=sorted({value for land in train_lands for value in land.values.values()}),
    )


def make_prompt(question: str) -> str:
    """The demo's prompt: short on purpose, so that a tiny model trains fast.

    Example:
        >>> make_prompt("Who founded Vorlak?")
        'Question: Who founded Vorlak?\\n'
    """
    return PROMPT_TEMPLATE.replace("{question}", question)


def read_fact(observation: str) -> tuple[str, str] | None:
    """What a reader takes from an observation: `(land, value)` of the first fact it states, or None.

    Example:
        >>> read_fact('Doc 1(Title: "Vor Lak") The capital of Vor Lak is Zum Bro.')
        ('Vor Lak', 'Zum Bro')
    """
    match = _FACT.search(observation)
    return (match.group(1), match.group(2)) if match else None


# --- The imperfect teacher -----------------------------------------------------------------------------------------

# What the teacher does on a question:
# - one-hop: "good" (search noun + land, answer what it reads), "lazy" (search the question's words) or "guess" (answer
#   without searching); after a lazy search it answers what it reads, which is nothing, so it guesses.
# - two-hop: "chain" (both searches), "shortcut" (the first search, then answers the land's name it read) or "guess".
BEHAVIOURS = {ONE_HOP: ("good", "lazy", "guess"), TWO_HOP: ("chain", "shortcut", "guess")}


@dataclass(frozen=True)
class TeacherSkill:
    """How often the teacher behaves well. One-hop: `good_search[attribute]` of the time it searches for the land,
    otherwise a lazy query (`lazy_share` of the rest) or a guess. Two-hop: `chain` of the time it runs both searches,
    `shortcut` of the time it stops after the first one and answers the land's name, otherwise it guesses.

    The default is good at capitals and rivers, poor at founders and mountains and usually stops after one search, so
    that the warm-started policy is right on about half of the one-hop questions and few two-hop ones.

    Example:
        >>> TeacherSkill.perfect().chain
        1.0
    """

    good_search: dict[str, float] = field(
        default_factory=lambda: {"capital": 0.9, "river": 0.9, "founder": 0.25, "mountain": 0.25}
    )
    lazy_share: float = 0.6
    chain: float = 0.3
    shortcut: float = 0.55

    def __post_init__(self):
        probabilities = [*self.good_search.values(), self.lazy_share, self.chain, self.shortcut]
        if not all(0.0 <= value <= 1.0 for value in probabilities) or self.chain + self.shortcut > 1.0:
            raise ValueError("TeacherSkill probabilities must lie in [0, 1], with chain + shortcut <= 1.")

    @classmethod
    def perfect(cls) -> TeacherSkill:
        """A teacher that always searches well (for the validation probe of copying)."""
        return cls(good_search={attribute.name: 1.0 for attribute in ATTRIBUTES}, chain=1.0, shortcut=0.0)

    def draw(self, question: dict, rng: random.Random) -> str:
        """Draws the teacher's behaviour on `question` (one of `BEHAVIOURS[question["type"]]`)."""
        draw = rng.random()
        if question["type"] == TWO_HOP:
            return "chain" if draw < self.chain else "shortcut" if draw < self.chain + self.shortcut else "guess"
        good = self.good_search.get(question["attribute"], 0.0)
        if draw < good:
            return "good"
        return "lazy" if draw < good + (1 - good) * self.lazy_share else "guess"


@dataclass(frozen=True)
class Plan:
    """The teacher's plan for one question: its behaviour and the answer it guesses when it has read nothing."""

    question: dict
    behaviour: str
    guess: str


def make_plans(questions: Sequence[dict], skill: TeacherSkill, answer_pool: Sequence[str], seed: int) -> list[Plan]:
    """Draws a plan per question (deterministic for a seed).

    Example:
        >>> world = make_world(seed=0, num_train_lands=4, num_dev_lands=1, num_test_lands=1)
        >>> plans = make_plans(world.train_questions, TeacherSkill(), world.answer_pool, seed=0)
        >>> {plan.behaviour for plan in plans} <= {"good", "lazy", "guess", "chain", "shortcut"}
        True
    """
    rng = random.Random(seed)
    return [Plan(question, skill.draw(question, rng), rng.choice(list(answer_pool))) for question in questions]


def teacher_action(plan: Plan, observations: Sequence[str]) -> tuple[str, str]:
    """The teacher's next decision, given the observation bodies it has read so far in this trajectory: `("search",
    query)` or `("answer", answer)`, whatever the protocol that writes it down (`render_turn`).

    Example:
        >>> question = {"type": "one_hop", "attribute": "capital", "land": "Vor Lak"}
        >>> teacher_action(Plan(question, "good", "Ka Lo"), [])
        ('search', 'capital Vor Lak')
    """
    question, behaviour = plan.question, plan.behaviour
    target = ATTRIBUTE[question["attribute"]]
    read = read_fact(observations[-1]) if observations else None
    if behaviour == "guess":
        return "answer", plan.guess
    if question["type"] == ONE_HOP:
        if not observations:
            return "search", target.query(question["land"]) if behaviour == "good" else target.lazy_query
        return "answer", read[1] if read else plan.guess
    if not observations:
        return "search", ATTRIBUTE[question["bridge"]].query(question["bridge_value"])
    if behaviour == "shortcut" or len(observations) > 1 or read is None:
        return "answer", read[0] if behaviour == "shortcut" and read else read[1] if read else plan.guess
    return "search", target.query(read[0])


def render_turn(action: str, content: str, protocol: str = "tags") -> str:
    """Writes one decision as a policy turn of `protocol`: Search-R1's tags, or a Qwen2.5 assistant turn (a
    `<tool_call>` calling `search`, or the bare answer, ended by the end-of-turn token).

    Example:
        >>> render_turn("search", "capital Vor Lak")
        '<search> capital Vor Lak </search>'
        >>> print(render_turn("search", "capital Vor Lak", "tool_call"))
        <tool_call>
        {"name": "search", "arguments": {"query": "capital Vor Lak"}}
        </tool_call><|im_end|>
        >>> render_turn("answer", "Zum Bro", "tool_call")
        'Zum Bro<|im_end|>'
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    if protocol == "tags":
        return f"<{action}> {content} </{action}>"
    if action == "answer":
        return content + TOOL_CALL_EOS
    call = json.dumps({"name": "search", "arguments": {"query": content}}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call>{TOOL_CALL_EOS}"


def teacher_turn(plan: Plan, observations: Sequence[str], protocol: str = "tags") -> str:
    """The teacher's next turn, given the observation bodies it has read so far in this trajectory, written in
    `protocol` (`"tags"` or `"tool_call"`).

    Example:
        >>> question = {"type": "two_hop", "attribute": "capital", "bridge": "river", "bridge_value": "Zum Bro",
        ...             "land": "Vor Lak"}
        >>> plan = Plan(question, "chain", "Ka Lo")
        >>> teacher_turn(plan, [])
        '<search> river Zum Bro </search>'
        >>> teacher_turn(plan, ['Doc 1(Title: "Vor Lak") The river of Vor Lak is Zum Bro.'])
        '<search> capital Vor Lak </search>'
        >>> teacher_turn(Plan(question, "shortcut", "Ka Lo"), ["The river of Vor Lak is Zum Bro."], "tool_call")
        'Vor Lak<|im_end|>'
    """
    return render_turn(*teacher_action(plan, observations), protocol)


def forced_start(turn: str) -> str:
    """The start of a teacher's turn that holds its decision, up to its first name: `<search> capital` (the action and
    the query's first word) or `<answer>`; in a tool call, up to the query's first word, and nothing of an answer
    (a tool-call answer starts with the name itself).

    Example:
        >>> forced_start("<search> capital Vor Lak </search>"), forced_start("<answer> Zum Bro </answer>")
        ('<search> capital', '<answer>')
        >>> forced_start(render_turn("search", "capital Vor Lak", "tool_call"))
        '<tool_call>\\n{"name": "search", "arguments": {"query": "capital'
        >>> forced_start(render_turn("answer", "Zum Bro", "tool_call"))
        ''
    """
    match = _BEFORE_NAME.match(turn)
    return match.group(0) if match else ""


class TeacherGenerator:
    """A `TurnGenerator` that writes the teacher's turns inside the real `SearchRollout`, reading the observations the
    rollout injected, so that demonstrations are tokenised exactly as the policy's own trajectories. `protocol` is the
    rollout's (`rollout.protocol`): the teacher writes tags, or tool calls read back from the chat template's tool
    messages.

    With `answerer` (another `TurnGenerator`, e.g. the model's), the teacher decides every action and the answerer
    writes every name: the teacher writes the start of each turn up to its first name (`<search> capital`,
    `<answer>`) and the answerer continues it. The probe of how well a model copies names (from the question into a
    query, from a passage into the next query or the answer) without its own search decisions.

    Example:
        >>> rollout = SearchRollout(retriever, tokenizer, max_turns=2)  # doctest: +SKIP
        >>> teacher = TeacherGenerator(tokenizer, plans)  # doctest: +SKIP
        >>> output = rollout.run(tokenize_prompts([make_prompt(p.question["question"]) for p in plans], tokenizer),
        ...                      teacher)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, plans: Sequence[Plan], protocol=None, answerer=None):
        from ..protocols import get_protocol

        self.tokenizer = tokenizer
        self.protocol = protocol or get_protocol("tags")
        self.plans = {make_prompt(plan.question["question"]): plan for plan in plans}
        if len(self.plans) != len(plans):
            raise ValueError("TeacherGenerator needs one plan per distinct question.")
        self.answerer = answerer
        self.eos_token_ids = [tokenizer.eos_token_id]
        if self.protocol.name == "tags":
            self._around = (self.protocol.observation_open.strip(), self.protocol.observation_close.strip())
        else:  # the chat template's own markup around a tool message's content
            self._around = tuple(tokenizer.decode(piece) for piece in self.protocol.frame(1))

    def _observations(self, completion: str) -> list[str]:
        opening, closing = self._around
        found = re.findall(re.escape(opening) + "(.*?)" + re.escape(closing), completion, re.DOTALL)
        # A tool message may also be the rollout's feedback on an invalid turn (the answerer's): no observation.
        return [body for body in found if not body.startswith("Error: ")]

    def _plan_and_observations(self, context) -> tuple[Plan, list[str]]:
        # Tags: the prompt is the context's first line. Chat: the user message, after the template's system prompt.
        tags = self.protocol.name == "tags"
        text = self.tokenizer.decode(context, skip_special_tokens=tags)
        prompt_start = 0 if tags else text.index(PROMPT_TEMPLATE.split("{question}")[0])
        prompt_end = text.index("\n", prompt_start) + 1
        return self.plans[text[prompt_start:prompt_end]], self._observations(text[prompt_end:])

    def generate(self, contexts, max_new_tokens, stop_strings):
        from ..generation import GeneratedTurn

        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        turns, forced = [], []
        for index, context in enumerate(contexts):
            turn = teacher_turn(*self._plan_and_observations(context), self.protocol.name)
            turns.append(GeneratedTurn(encode(turn), stopped=True))
            if self.answerer is not None:
                forced.append((index, encode(forced_start(turn))))
        if forced:
            continued = self.answerer.generate(
                [contexts[index] + prefix for index, prefix in forced],
                [max(1, max_new_tokens[index] - len(prefix)) for index, prefix in forced],
                stop_strings,
            )
            for (index, prefix), turn in zip(forced, continued):
                turns[index] = GeneratedTurn(prefix + list(turn.token_ids), stopped=turn.stopped)
        return turns
