"""Deterministic short person records: the benchmark data set (no randomness across runs)."""

from __future__ import annotations

import random
from typing import Any

FIRST = ["Alice", "John", "Maria", "Kenji", "Eva", "Omar", "Sofia", "Liam", "Chen", "Ana", "Lukas", "Priya",
         "Mateo", "Fatima", "Noah", "Ingrid", "Tomas", "Aisha", "Pablo", "Hana", "Oscar", "Nadia", "Ivan", "Leila"]
LAST = ["Smith", "Doe", "Garcia", "Sato", "Novak", "Haddad", "Rossi", "Murphy", "Wei", "Lima", "Becker", "Patel",
        "Lopez", "Khan", "Brown", "Larsen", "Horvat", "Bello", "Ruiz", "Kim", "Berg", "Aziz", "Petrov", "Moreau"]
CITIES = ["Lisbon", "Paris", "Osaka", "Prague", "Amman", "Milan", "Dublin", "Shanghai", "Porto", "Hamburg", "Mumbai",
          "Madrid", "Lagos", "Toronto", "Oslo", "Zagreb", "Seoul", "Vienna", "Nairobi", "Lyon", "Kyoto", "Cairo"]
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "{name}, {age}, lives in {city}.",
    "Meet {name}: {age} years old, based in {city}.",
    "{name} ({age}) lives in {city}.",
]


def person_records(n: int, seed: int = 2048) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        age = rng.randint(18, 90)
        city = rng.choice(CITIES)
        text = rng.choice(TEMPLATES).format(name=name, age=age, city=city)
        out.append({"id": f"p{i:05d}", "text": text, "expected": {"name": name, "age": age, "city": city}})
    return out


def exact(data: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(data.get(k) == v for k, v in expected.items())
