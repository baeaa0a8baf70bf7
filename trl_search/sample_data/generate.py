"""Generates the shipped sample data: a seeded fictional world, its encyclopedia and questions about it.

Every name is invented from random syllables, so no model can know an answer in advance: it is only findable by
searching the corpus. Single-hop questions need one passage; two-hop questions chain two (a person's passage names a
city, the city's passage names its country).

Writes, in Search-R1's and FlashRAG's formats:
- `corpus.jsonl`: `{"id", "contents"}` rows, the title on the first line of `contents`;
- `questions.jsonl`: `{"id", "question", "golden_answers", "metadata"}` rows, `metadata["split"]` being `train`
  or `test`.

The data is written for this project and released under Apache-2.0 with the package. Regenerate it with
`python -m trl_search.sample_data.generate --out trl_search/sample_data` (the output is identical for the same seed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass


SEED = 20260501
NUM_COUNTRIES, NUM_CITIES, NUM_PEOPLE, NUM_COMPANIES = 12, 40, 80, 30
NUM_QUESTIONS, NUM_TEST_QUESTIONS = 100, 30

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "q",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "vr",
    "z",
    "zh",
    "h",
    "j",
    "c",
    "cl",
    "sk",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y"]
_CODAS = ["", "", "n", "l", "r", "s", "th", "m", "nd", "rn", "sk", "x", "v"]
_PROFESSIONS = ["cartographer", "glassmaker", "astronomer", "composer", "engineer", "poet", "botanist", "architect"]
_WORKS = {  # profession -> what they are known for
    "cartographer": "the map",
    "glassmaker": "the lens",
    "astronomer": "the star catalogue",
    "composer": "the opera",
    "engineer": "the bridge",
    "poet": "the epic",
    "botanist": "the herbarium",
    "architect": "the tower",
}
_PRODUCTS = [
    "clockwork lanterns",
    "river barges",
    "felt hats",
    "copper kettles",
    "signal mirrors",
    "loom engines",
    "salt biscuits",
    "weather kites",
]
_CURRENCY_UNITS = ["crown", "mark", "shell", "penny", "talon"]


@dataclass
class _Country:
    name: str
    currency: str
    founded: int
    capital: _City | None = None


@dataclass
class _City:
    name: str
    country: _Country
    river: str
    founded: int
    founder: _Person | None = None


@dataclass
class _Person:
    name: str
    birth_city: _City
    born: int
    profession: str
    work: str


@dataclass
class _Company:
    name: str
    founder: _Person
    headquarters: _City
    product: str
    founded: int


class _NameMaker:
    """Unique pronounceable invented names."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
            word = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if word not in self.used and len(word) >= 4:
                self.used.add(word)
                return word


def _build_world(rng: random.Random):
    names = _NameMaker(rng)
    countries = [
        _Country(names.word(2) + rng.choice(["ia", "or", "and", "ara"]), "", rng.randint(900, 1500))
        for _ in range(NUM_COUNTRIES)
    ]
    for country in countries:
        country.currency = f"{names.word(2).lower()} {rng.choice(_CURRENCY_UNITS)}"
    rivers = [names.word(2) for _ in range(12)]
    cities = [
        _City(
            names.word(rng.choice([2, 3])), countries[i % NUM_COUNTRIES], rng.choice(rivers), rng.randint(1100, 1750)
        )
        for i in range(NUM_CITIES)
    ]
    for country in countries:
        country.capital = next(city for city in cities if city.country is country)
    people = []
    for _ in range(NUM_PEOPLE):
        profession = rng.choice(_PROFESSIONS)
        work = f"{_WORKS[profession]} of {names.word(2)}"
        people.append(
            _Person(f"{names.word(2)} {names.word(2)}", rng.choice(cities), rng.randint(1600, 1900), profession, work)
        )
    # A city's founder is born elsewhere and long before the founding is irrelevant here: the world is fictional.
    for city, founder in zip(cities, rng.sample(people, NUM_CITIES)):
        city.founder = founder
    founders = rng.sample(people, NUM_COMPANIES)
    companies = [
        _Company(
            f"{names.word(2)} {rng.choice(['Works', 'Company', 'Guild', 'Foundry'])}",
            founder,
            rng.choice(cities),
            rng.choice(_PRODUCTS),
            founder.born + rng.randint(25, 50),
        )
        for founder in founders
    ]
    return countries, cities, people, companies


def _passages(countries, cities, people, companies, rng: random.Random) -> list[tuple[str, str, object]]:
    """(title, text, entity) triples; two passages per country, city and person, one per company."""
    out = []
    for country in countries:
        others = [city.name for city in cities if city.country is country and city is not country.capital]
        out.append(
            (
                country.name,
                f"{country.name} is a small inland state. Its capital and largest city is "
                f"{country.capital.name}. Other towns of {country.name} include {', '.join(others) or 'none'}. "
                f"Trade in {country.name} is paid in the {country.currency}.",
                country,
            )
        )
        out.append(
            (
                f"History of {country.name}",
                f"The state of {country.name} was proclaimed in {country.founded}. "
                f"Since then its coins have been the {country.currency}, and its court has sat in "
                f"{country.capital.name}.",
                country,
            )
        )
    for city in cities:
        capital = "the capital" if city.country.capital is city else "a town"
        out.append(
            (
                city.name,
                f"{city.name} is {capital} of {city.country.name}, on the banks of the river "
                f"{city.river}. It was founded in {city.founded} by {city.founder.name}, a "
                f"{city.founder.profession}.",
                city,
            )
        )
        out.append(
            (
                f"{city.name} (town life)",
                f"Markets in {city.name} are held on the {city.river} quays. "
                f"Local people remember {city.founder.name} as the founder of {city.name}, in {city.founded}.",
                city,
            )
        )
    for person in people:
        out.append(
            (
                person.name,
                f"{person.name} (born {person.born}) was a {person.profession} from "
                f"{person.birth_city.name}. {person.name} is best known for {person.work}.",
                person,
            )
        )
        out.append(
            (
                f"{person.name} (early life)",
                f"{person.name} was born in {person.birth_city.name} in "
                f"{person.born} and trained as a {person.profession} before writing or building "
                f"{person.work}.",
                person,
            )
        )
    for company in companies:
        out.append(
            (
                company.name,
                f"{company.name} was founded in {company.founded} by {company.founder.name}. "
                f"Its headquarters are in {company.headquarters.name}, and it is known for its "
                f"{company.product}.",
                company,
            )
        )
    rng.shuffle(out)
    return out


def _questions(countries, cities, people, companies, rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(question, gold answers, kind) triples; every answer is an invented name or a year found only in the corpus."""
    pool = []
    for country in countries:
        pool.append((f"What is the capital of {country.name}?", [country.capital.name], "single-hop"))
        pool.append((f"What currency is used in {country.name}?", [country.currency], "single-hop"))
        pool.append((f"Who founded the capital of {country.name}?", [country.capital.founder.name], "two-hop"))
    for city in cities:
        pool.append((f"Who founded the town of {city.name}?", [city.founder.name], "single-hop"))
        pool.append((f"In which year was {city.name} founded?", [str(city.founded)], "single-hop"))
        pool.append((f"Which river flows through {city.name}?", [city.river], "single-hop"))
    for person in people:
        pool.append((f"In which town was {person.name} born?", [person.birth_city.name], "single-hop"))
        pool.append((f"In which country was {person.name} born?", [person.birth_city.country.name], "two-hop"))
    for company in companies:
        pool.append((f"Who founded {company.name}?", [company.founder.name], "single-hop"))
        pool.append(
            (
                f"In which country does {company.name} have its headquarters?",
                [company.headquarters.country.name],
                "two-hop",
            )
        )
    return rng.sample(pool, NUM_QUESTIONS)


def make_sample_data(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Builds the sample corpus rows and question rows (deterministic for a given seed).

    Example:
        >>> corpus, questions = make_sample_data()
        >>> sorted(corpus[0]), sorted(questions[0])
        (['contents', 'id'], ['golden_answers', 'id', 'metadata', 'question'])
    """
    rng = random.Random(seed)
    world = _build_world(rng)
    corpus = [
        {"id": str(index), "contents": f'"{title}"\n{text}'}
        for index, (title, text, _) in enumerate(_passages(*world, rng))
    ]
    questions = []
    for index, (question, answers, kind) in enumerate(_questions(*world, rng)):
        split = "test" if index < NUM_TEST_QUESTIONS else "train"
        questions.append(
            {
                "id": f"{split}_{index}",
                "question": question,
                "golden_answers": answers,
                "metadata": {"split": split, "type": kind},
            }
        )
    return corpus, questions


def write_sample_data(directory: str | os.PathLike, seed: int = SEED) -> tuple[str, str]:
    """Writes `corpus.jsonl` and `questions.jsonl` into `directory` and returns their paths.

    Example:
        >>> write_sample_data("/tmp/sample-data")  # doctest: +SKIP
        ('/tmp/sample-data/corpus.jsonl', '/tmp/sample-data/questions.jsonl')
    """
    corpus, questions = make_sample_data(seed)
    os.makedirs(directory, exist_ok=True)
    paths = (os.path.join(directory, "corpus.jsonl"), os.path.join(directory, "questions.jsonl"))
    for path, rows in zip(paths, (corpus, questions)):
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the trl-search sample corpus and questions.")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for path in write_sample_data(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
