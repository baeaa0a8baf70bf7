"""The demo world: deterministic, answers unguessable and findable in exactly one passage, splits disjoint."""

import random

from trl_search.demo_task import (
    ATTRIBUTES,
    TeacherSkill,
    demonstration,
    make_prompt,
    make_world,
    read_answer,
)
from trl_search.protocols import TagsProtocol
from trl_search.retrievers import BM25Retriever
from trl_search.rewards import normalize_answer


def _tokens(text):
    return set(normalize_answer(text).split())


def test_world_is_deterministic_per_seed():
    assert make_world(seed=3, num_train_lands=20, num_test_lands=5) == make_world(
        seed=3, num_train_lands=20, num_test_lands=5
    )
    assert make_world(seed=3).corpus != make_world(seed=4).corpus


def test_answers_are_unguessable_and_found_in_exactly_their_lands_passage():
    world = make_world(seed=0)
    for question in world.train_questions + world.test_questions:
        answer = normalize_answer(question["golden_answers"][0])
        assert not _tokens(answer) & _tokens(question["question"]), question
        holders = [row for row in world.corpus if f" {answer} " in f" {normalize_answer(row['contents'])} "]
        assert holders == [world.passage_of(question["land"], question["attribute"])], question


def test_train_and_held_out_lands_are_disjoint():
    world = make_world(seed=0)
    train = {question["land"] for question in world.train_questions}
    test = {question["land"] for question in world.test_questions}
    assert train and test and not train & test
    assert len(world.test_questions) == len(world.test_lands) * len(ATTRIBUTES)


def test_distractors_catch_lazy_queries():
    world = make_world(seed=0)
    retriever = BM25Retriever.build(world.corpus, backend="numpy")
    lands = {land.name for land in world.train_lands + world.test_lands}
    for attribute in ATTRIBUTES:
        top = retriever.search([attribute.lazy_query], k=1)[0][0]
        assert top.title not in lands  # a distractor, with no answer in it
    for question in world.test_questions:  # a careful query finds the passage with the answer
        attribute = next(a for a in ATTRIBUTES if a.name == question["attribute"])
        top = retriever.search([attribute.good_query(question["land"])], k=1)[0][0]
        assert question["golden_answers"][0] in top.text, question


def test_teacher_demonstrations():
    world = make_world(seed=0, num_train_lands=30, num_test_lands=2)
    retriever = BM25Retriever.build(world.corpus, backend="numpy")
    render = TagsProtocol().render_passages
    perfect = TeacherSkill(good_search={attribute.name: 1.0 for attribute in ATTRIBUTES})
    for question in world.train_questions[:10]:
        demo = demonstration(question, retriever, render, perfect, world.answer_pool, random.Random(0), top_k=2)
        assert demo.kind == "good"
        assert question["land"] in demo.segments[0][1] and demo.segments[0][1].startswith("<search> ")
        assert demo.segments[-1] == ("policy", f"<answer> {question['golden_answers'][0]} </answer>")
    kinds = {
        demonstration(question, retriever, render, TeacherSkill(), world.answer_pool, random.Random(index)).kind
        for index, question in enumerate(world.train_questions)
    }
    assert kinds == {"good", "lazy", "guess"}
    assert make_prompt("Who?").endswith("Who?\n")
    land = world.test_lands[0]
    hit = retriever.search([f"river {land.name}"], k=1)[0]
    assert hit[0].id == world.passage_of(land.name, "river")["id"]
    assert read_answer(hit, "river") == land.values["river"]
