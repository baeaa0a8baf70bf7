"""The demo world: deterministic, answers unguessable and findable in exactly one passage, splits disjoint, two-hop
questions answerable only through two dependent searches, and a teacher that plays inside the real rollout."""

import pytest

from trl_search.demo.world import (
    ATTRIBUTE,
    ATTRIBUTES,
    ONE_HOP,
    TWO_HOP,
    Plan,
    TeacherGenerator,
    TeacherSkill,
    forced_start,
    make_plans,
    make_prompt,
    make_world,
    read_fact,
    render_turn,
    teacher_turn,
)
from trl_search.retrievers import BM25Retriever
from trl_search.rewards import normalize_answer


def _tokens(text):
    return set(normalize_answer(text).split())


@pytest.fixture(scope="module")
def world():
    return make_world(seed=0)


@pytest.fixture(scope="module")
def retriever(world):
    return BM25Retriever.build(world.corpus, backend="numpy")


def test_world_is_deterministic_per_seed():
    assert make_world(seed=3, num_train_lands=20) == make_world(seed=3, num_train_lands=20)
    assert make_world(seed=3).corpus != make_world(seed=4).corpus


def test_answers_are_unguessable_and_found_in_exactly_their_lands_passage(world):
    for question in world.train_questions + world.dev_questions + world.test_questions:
        answer = normalize_answer(question["golden_answers"][0])
        if question["type"] == ONE_HOP:
            assert not _tokens(answer) & _tokens(question["question"]), question
        else:  # its words may recur in the bridge value (answer words are drawn from one pool), never the whole name
            assert f" {answer} " not in f" {normalize_answer(question['question'])} ", question
        holders = [row for row in world.corpus if f" {answer} " in f" {normalize_answer(row['contents'])} "]
        assert holders == [world.passage_of(question["land"], question["attribute"])], question


def test_splits_are_disjoint_and_hold_both_question_types(world):
    lands = [{question["land"] for question in split} for split in (world.train_questions, world.dev_questions,
                                                                     world.test_questions)]  # fmt: skip
    assert all(lands) and not (lands[0] & lands[1] or lands[0] & lands[2] or lands[1] & lands[2])
    for split, land_list in ((world.test_questions, world.test_lands), (world.train_questions, world.train_lands)):
        assert sum(question["type"] == ONE_HOP for question in split) == len(land_list) * len(ATTRIBUTES)
        assert sum(question["type"] == TWO_HOP for question in split) == len(land_list) * 2


def test_two_hop_questions_name_the_land_only_through_another_fact(world):
    for question in world.test_questions:
        if question["type"] != TWO_HOP:
            continue
        assert question["land"] not in question["question"] and question["bridge_value"] in question["question"]
        assert question["bridge"] != question["attribute"]
        bridge = world.passage_of(question["land"], question["bridge"])["contents"]
        assert read_fact(bridge) == (question["land"], question["bridge_value"])


def test_careful_queries_find_the_fact_and_lazy_ones_a_distractor(world, retriever):
    lands = {land.name for land in world.lands}
    for attribute in ATTRIBUTES:
        top = retriever.search([attribute.lazy_query], k=1)[0][0]
        assert top.title not in lands and read_fact(top.contents) is None  # a distractor, with no answer in it
    for question in world.test_questions:
        if question["type"] == ONE_HOP:  # one search finds the answer
            top = retriever.search([ATTRIBUTE[question["attribute"]].query(question["land"])], k=1)[0][0]
            assert read_fact(top.contents) == (question["land"], question["golden_answers"][0]), question
        else:  # the first search finds the land, the second (which needs the land's name) the answer
            top = retriever.search([ATTRIBUTE[question["bridge"]].query(question["bridge_value"])], k=1)[0][0]
            assert read_fact(top.contents)[0] == question["land"]
            assert question["golden_answers"][0] not in top.contents
            top = retriever.search([ATTRIBUTE[question["attribute"]].query(question["land"])], k=1)[0][0]
            assert read_fact(top.contents)[1] == question["golden_answers"][0]


def test_teacher_turns():
    one_hop = {"type": ONE_HOP, "attribute": "river", "land": "Vor Lak"}
    passage = "Doc 1(Title: Vor Lak) The river of Vor Lak is Zum Bro."
    assert teacher_turn(Plan(one_hop, "good", "Ka Lo"), []) == "<search> river Vor Lak </search>"
    assert teacher_turn(Plan(one_hop, "good", "Ka Lo"), [passage]) == "<answer> Zum Bro </answer>"
    assert teacher_turn(Plan(one_hop, "lazy", "Ka Lo"), []) == "<search> which river flows </search>"
    assert (
        teacher_turn(Plan(one_hop, "lazy", "Ka Lo"), ["Doc 1(Title: River) Rivers flow."])
        == "<answer> Ka Lo </answer>"
    )
    assert teacher_turn(Plan(one_hop, "guess", "Ka Lo"), []) == "<answer> Ka Lo </answer>"
    two_hop = {
        "type": TWO_HOP,
        "attribute": "founder",
        "land": "Vor Lak",
        "bridge": "river",
        "bridge_value": "Zum Bro",
    }
    founder = "Doc 1(Title: Vor Lak) The founder of Vor Lak is Mip Tor."
    assert teacher_turn(Plan(two_hop, "chain", "Ka Lo"), [passage]) == "<search> founder Vor Lak </search>"
    assert teacher_turn(Plan(two_hop, "chain", "Ka Lo"), [passage, founder]) == "<answer> Mip Tor </answer>"
    assert teacher_turn(Plan(two_hop, "shortcut", "Ka Lo"), []) == "<search> river Zum Bro </search>"
    assert teacher_turn(Plan(two_hop, "shortcut", "Ka Lo"), [passage]) == "<answer> Vor Lak </answer>"


def test_teacher_skill_draws_and_validates(world):
    plans = make_plans(world.train_questions, TeacherSkill(), world.answer_pool, seed=0)
    assert plans == make_plans(world.train_questions, TeacherSkill(), world.answer_pool, seed=0)
    share = {}
    for plan in plans:
        key = (plan.question["type"], plan.question["attribute"] if plan.question["type"] == ONE_HOP else "")
        share.setdefault(key, []).append(plan.behaviour)
    assert share[(ONE_HOP, "capital")].count("good") / len(share[(ONE_HOP, "capital")]) > 0.8
    assert share[(ONE_HOP, "founder")].count("good") / len(share[(ONE_HOP, "founder")]) < 0.4
    two_hop = share[(TWO_HOP, "")]
    assert two_hop.count("shortcut") > two_hop.count("chain") > 0  # often stops after one search
    assert {plan.behaviour for plan in make_plans(world.test_questions, TeacherSkill.perfect(), ["x"], 0)} == {
        "good",
        "chain",
    }
    with pytest.raises(ValueError, match="chain \\+ shortcut"):
        TeacherSkill(chain=0.7, shortcut=0.5)


class _Completer:
    """A stand-in for a model that copies perfectly: it continues the teacher's forced turn start with the rest of the
    perfect teacher's turn, and records each start it was given."""

    def __init__(self, tokenizer, plans):
        self.tokenizer, self.teacher, self.continued = tokenizer, TeacherGenerator(tokenizer, plans), []

    def generate(self, contexts, max_new_tokens, stop_strings):
        from trl_search.generation import GeneratedTurn

        turns = []
        for context in contexts:
            text = self.tokenizer.decode(context, skip_special_tokens=True)
            done = text.rfind("</information>\n\n")
            start = text[done + len("</information>\n\n") :] if done != -1 else text[text.index("\n") + 1 :]
            self.continued.append(start)
            prompt_end = text.index("\n") + 1
            observations = self.teacher._observations(text[prompt_end:])
            full = teacher_turn(self.teacher.plans[text[:prompt_end]], observations)
            assert full.startswith(start)
            turns.append(
                GeneratedTurn(self.tokenizer(full[len(start) :], add_special_tokens=False)["input_ids"], stopped=True)
            )
        return turns


def test_teacher_plays_inside_the_real_rollout(world, retriever):
    from trl_search.data import tokenize_prompts
    from trl_search.offline_models import build_tokenizer
    from trl_search.rewards import exact_match_reward
    from trl_search.rollout import SearchRollout

    tokenizer = build_tokenizer([row["contents"] for row in world.corpus], vocab_size=600)
    questions = [question for question in world.test_questions[:12]]
    plans = make_plans(questions, TeacherSkill.perfect(), world.answer_pool, seed=0)
    rollout = SearchRollout(retriever, tokenizer, max_turns=2, retrieval_top_k=1, max_completion_length=256)
    prompts = tokenize_prompts([make_prompt(question["question"]) for question in questions], tokenizer)
    output = rollout.run(prompts, TeacherGenerator(tokenizer, plans))
    texts = [tokenizer.decode(sample.completion_ids, skip_special_tokens=True) for sample in output.samples]
    assert exact_match_reward(texts, [question["golden_answers"] for question in questions]) == [1.0] * len(questions)
    for sample, question in zip(output.samples, questions):
        assert sample.num_searches == (1 if question["type"] == ONE_HOP else 2)
        # the observations are the rollout's own (mask 0); the teacher wrote only the policy turns (mask 1)
        policy = tokenizer.decode([t for t, m in zip(sample.completion_ids, sample.env_mask) if m])
        assert "<information>" not in policy and policy.count("<search>") == sample.num_searches
    # with an answerer, the teacher decides each action and writes it up to its first name; the answerer continues
    completer = _Completer(tokenizer, plans)
    output = rollout.run(prompts, TeacherGenerator(tokenizer, plans, answerer=completer))
    texts = [tokenizer.decode(sample.completion_ids, skip_special_tokens=True) for sample in output.samples]
    assert exact_match_reward(texts, [question["golden_answers"] for question in questions]) == [1.0] * len(questions)
    assert {prefix.split(" ")[0] for prefix in completer.continued} == {"<search>", "<answer>"}
    assert all(prefix == "<answer>" or prefix.count(" ") == 1 for prefix in completer.continued)
    with pytest.raises(ValueError, match="one plan per distinct question"):
        TeacherGenerator(tokenizer, plans + plans[:1])


def test_teacher_turns_as_tool_calls():
    """The same decisions as tags, written as Qwen2.5 assistant turns; the forced start of a call ends at the query's
    first word, and a tool-call answer (the bare name) has none."""
    two_hop = {
        "type": TWO_HOP,
        "attribute": "founder",
        "land": "Vor Lak",
        "bridge": "river",
        "bridge_value": "Zum Bro",
    }
    passage = "Doc 1(Title: Vor Lak) The river of Vor Lak is Zum Bro."
    call = teacher_turn(Plan(two_hop, "chain", "Ka Lo"), [passage], "tool_call")
    assert call == '<tool_call>\n{"name": "search", "arguments": {"query": "founder Vor Lak"}}\n</tool_call><|im_end|>'
    assert forced_start(call) == '<tool_call>\n{"name": "search", "arguments": {"query": "founder'
    answer = teacher_turn(Plan(two_hop, "shortcut", "Ka Lo"), [passage], "tool_call")
    assert answer == "Vor Lak<|im_end|>" and forced_start(answer) == ""
    for plan in (Plan(two_hop, behaviour, "Ka Lo") for behaviour in ("chain", "shortcut", "guess")):
        for observations in ([], [passage]):
            tags = teacher_turn(plan, observations)
            kind = "search" if tags.startswith("<search>") else "answer"
            assert teacher_turn(plan, observations, "tool_call") == render_turn(
                kind, tags[len(kind) + 3 : -len(kind) - 4], "tool_call"
            )
    with pytest.raises(ValueError, match="Unknown protocol"):
        render_turn("answer", "Zum Bro", "json")


class _ChatCompleter:
    """`_Completer` for tool calls: continues each forced start with the rest of the perfect teacher's turn."""

    def __init__(self, teacher):
        self.teacher, self.continued = teacher, []
        self.eos_token_ids = teacher.eos_token_ids

    def generate(self, contexts, max_new_tokens, stop_strings):
        from trl_search.generation import GeneratedTurn

        tokenizer, turns = self.teacher.tokenizer, []
        for context in contexts:
            plan, observations = self.teacher._plan_and_observations(context)
            full = teacher_turn(plan, observations, "tool_call")
            start = forced_start(full)
            assert tokenizer.decode(context, skip_special_tokens=False).endswith("assistant\n" + start)
            self.continued.append(start)
            turns.append(
                GeneratedTurn(tokenizer(full[len(start) :], add_special_tokens=False)["input_ids"], stopped=True)
            )
        return turns


def test_teacher_writes_tool_calls_inside_the_real_rollout(world, retriever):
    from trl_search.data import tokenize_prompts
    from trl_search.offline_models import build_chat_tokenizer
    from trl_search.rewards import exact_match_reward
    from trl_search.rollout import SearchRollout

    tokenizer = build_chat_tokenizer([row["contents"] for row in world.corpus], "qwen2_5", vocab_size=900)
    rollout = SearchRollout(
        retriever, tokenizer, protocol="tool_call", max_turns=2, retrieval_top_k=1, max_completion_length=320
    )
    protocol = rollout.protocol
    questions = world.test_questions[:24]
    prompts = tokenize_prompts(
        [[{"role": "user", "content": make_prompt(question["question"])}] for question in questions],
        tokenizer,
        tools=protocol.tools,
    )
    golds = [question["golden_answers"] for question in questions]
    searches = {"good": 1, "lazy": 1, "guess": 0, "chain": 2, "shortcut": 1}
    for skill in (TeacherSkill.perfect(), TeacherSkill(chain=0.4, shortcut=0.3)):
        plans = make_plans(questions, skill, world.answer_pool, seed=1)
        output = rollout.run(prompts, TeacherGenerator(tokenizer, plans, protocol=protocol))
        for sample, plan in zip(output.samples, plans):
            assert sample.num_searches == searches[plan.behaviour] and sample.num_invalid == 0, plan
            assert sample.stop_reason == "answer" and sample.completion_ids[-1] == tokenizer.eos_token_id
            # policy turns (mask 1) are exactly the teacher's turns; every tool message is the rollout's (mask 0)
            policy = tokenizer.decode([t for t, m in zip(sample.completion_ids, sample.env_mask) if m])
            injected = tokenizer.decode([t for t, m in zip(sample.completion_ids, sample.env_mask) if not m])
            assert policy.count("<tool_call>") == sample.num_searches and "<tool_response>" not in policy
            assert injected.count("<tool_response>") == sample.num_searches and "<tool_call>" not in injected
            assert policy.endswith(f"{sample.predicted_answer}<|im_end|>")
            if plan.behaviour == "guess":
                assert sample.predicted_answer == plan.guess
        scores = exact_match_reward([""] * len(questions), golds, [s.predicted_answer for s in output.samples])
        if skill == TeacherSkill.perfect():
            assert scores == [1.0] * len(questions)
    # with an answerer, the teacher forces each call up to the query's first word; the answerer writes the rest
    plans = make_plans(questions, TeacherSkill.perfect(), world.answer_pool, seed=1)
    completer = _ChatCompleter(TeacherGenerator(tokenizer, plans, protocol=protocol))
    output = rollout.run(prompts, TeacherGenerator(tokenizer, plans, protocol=protocol, answerer=completer))
    assert exact_match_reward([""] * len(questions), golds, [s.predicted_answer for s in output.samples]) == [
        1.0
    ] * len(questions)
    assert set(completer.continued) - {""} and all(
        start == "" or start.endswith(tuple(f'"{attribute.noun}' for attribute in ATTRIBUTES))
        for start in completer.continued
    )
