"""A second synthetic math corpus, unlike the embedded one: homework-forum threads.

The experiment's recipe (ratio, learning rate, steps) was tuned on the embedded corpus
(embedded.py); this one checks that SLM's gains carry over to data nobody tuned on.
It differs in what the problems are and, above all, in what the noise is:

* ``web``   forum threads: a question, chatter ("bump", "same homework lol"), quoted
            posts, signatures, and *wrong* worked attempts (an arithmetic slip carried
            to a wrong answer) around one correct "Best answer" solution. The noise
            looks like math, so only a model that knows the math can tell it apart.
* ``clean`` textbook layout: problem, correct solution, "The answer is N."
* ``eval``  held-out problems (never in web/clean), also in ``eval_problems.jsonl``.

Problems: linear equations, unit conversions, unit prices, means, grouping, draining
tanks, in a "Problem:/Solution:" layout. Pure Python, deterministic in ``seed``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator

from slm_jax.corpora import embedded
from slm_jax.corpora.embedded import Document, Problem

_NAMES = ("Ana", "Bo", "Chen", "Dev", "Eva", "Femi", "Gus", "Ines", "Jon", "Kai", "Lia",
          "Max", "Noor", "Oli", "Pia", "Raj", "Sol", "Tom", "Val", "Yara")


class _Solution(Problem):
    """The forum's layout: "Problem:/Solution:" ending in "The answer is N."."""

    labels = ("Problem", "Solution")

    def solution(self) -> str:
        return "\n".join([*self.steps, f"The answer is {self.answer}."])


PROMPT_LABELS = _Solution.labels


def _linear_equation(rng: random.Random) -> Problem:
    a, x, b = rng.randint(2, 9), rng.randint(2, 20), rng.randint(1, 40)
    c = a * x + b
    return _Solution(f"Solve for x: {a}x + {b} = {c}.",
                     (f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}.",
                      f"Divide both sides by {a}: x = {c - b} / {a} = {x}."),
                     x, ("linear_equation", a, x, b))


_UNITS = (("hours", "minutes", 60), ("kilograms", "grams", 1000), ("meters", "centimeters", 100),
          ("dozens", "eggs", 12), ("weeks", "days", 7), ("feet", "inches", 12))


def _unit_conversion(rng: random.Random) -> Problem:
    big, small, factor = rng.choice(_UNITS)
    n = rng.randint(2, 30)
    return _Solution(f"How many {small} are in {n} {big}?",
                     (f"Each of the {big} is {factor} {small}, so {n} * {factor} = {n * factor}.",),
                     n * factor, ("unit_conversion", big, n))


def _unit_price(rng: random.Random) -> Problem:
    n, price = rng.randint(2, 12), rng.randint(2, 30)
    thing = rng.choice(("pens", "batteries", "tiles", "seeds", "rolls", "cans"))
    return _Solution(f"A pack of {n} {thing} costs ${n * price}. How many dollars does one cost?",
                     (f"One costs {n * price} / {n} = {price} dollars.",),
                     price, ("unit_price", n, price))


def _mean(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 30), rng.randint(1, 30)
    c = rng.randint(1, 30)
    c += (3 - (a + b + c) % 3) % 3  # a whole-number mean
    total = a + b + c
    return _Solution(f"What is the mean of {a}, {b} and {c}?",
                     (f"The sum is {a} + {b} + {c} = {total}.",
                      f"The mean is {total} / 3 = {total // 3}."),
                     total // 3, ("mean", a, b, c))


def _teams(rng: random.Random) -> Problem:
    size, teams = rng.randint(2, 11), rng.randint(2, 15)
    name = rng.choice(_NAMES)
    return _Solution(f"Coach {name} splits {size * teams} players into teams of {size}. "
                     "How many teams are there?",
                     (f"There are {size * teams} / {size} = {teams} teams.",),
                     teams, ("teams", size, teams))


def _draining_tank(rng: random.Random) -> Problem:
    rate, minutes = rng.randint(2, 15), rng.randint(2, 12)
    drained = rate * minutes
    capacity = drained + rng.randint(5, 200)
    return _Solution(f"A tank holds {capacity} liters and drains {rate} liters per minute. "
                     f"How many liters are left after {minutes} minutes?",
                     (f"It drains {rate} * {minutes} = {drained} liters.",
                      f"There are {capacity} - {drained} = {capacity - drained} liters left."),
                     capacity - drained, ("draining_tank", rate, minutes, capacity))


TEMPLATES = (_linear_equation, _unit_conversion, _unit_price, _mean, _teams, _draining_tank)


# --------------------------------------------------------------------------
# Forum noise: chatter, quotes, signatures and wrong attempts.

_CHATTER = ("bump", "same homework lol", "Can someone help me pls, test is tomorrow!!",
            "thanks so much!!!", "I hate word problems", "this is so confusing",
            "nvm figured it out", "ok but why though", "my teacher explained this so badly",
            "+1 need this too", "is this from chapter 4?", "ty", "wait what")
_SIGNATURES = ("-- sent from my phone", "~ member since 2014, 3,201 posts",
               "Math is hard, coffee helps.", "-- not a tutor, just a student",
               "[sig] grade 8, algebra I [/sig]")


def _wrong_attempt(rng: random.Random, problem: Problem) -> str:
    """A worked reply with one arithmetic slip that it carries to a wrong final answer."""
    slip = rng.choice((-3, -2, -1, 1, 2, 5, 10))
    wrong = problem.answer + slip
    steps = list(problem.steps)
    row = rng.randrange(len(steps))
    head, sep, value = steps[row].rpartition("= ")
    if sep and value.rstrip(".").lstrip("-").isdigit():
        # "a op b = c." -> "a op b = c'." with the same slip.
        steps[row] = f"{head}= {int(value.rstrip('.')) + slip}."
    return "\n".join([rng.choice(("I tried:", "my attempt:", "Here's what I got:")), *steps,
                      f"So the answer is {wrong}? not sure"])


def _thread(rng: random.Random, problem: Problem) -> tuple[str, int]:
    """The problem as a forum thread; returns (text, characters that are not the solution)."""
    user = lambda: f"{rng.choice(('guest', 'mathkid', 'anon', 'helper'))}{rng.randint(1, 9999)}"
    question = f"{PROMPT_LABELS[0]}: {problem.question}"
    solution = f"{PROMPT_LABELS[1]}: {problem.solution()}"
    posts = [f"{user()} wrote:\n{question}"]
    for _ in range(rng.randint(2, 4)):
        kind = rng.random()
        if kind < 0.35:
            posts.append(f"{user()} wrote:\n{_wrong_attempt(rng, problem)}")
        elif kind < 0.55:
            posts.append(f"{user()} wrote:\n> {problem.question}\n{rng.choice(_CHATTER)}")
        else:
            posts.append(f"{user()} wrote:\n{rng.choice(_CHATTER)}\n{rng.choice(_SIGNATURES)}")
    best = f"Best answer ({user()}):\n{solution}"
    posts.insert(rng.randint(1, len(posts)), best)
    text = "\n\n".join(posts)
    return text, len(text) - len(question) - len(solution)


def iter_documents(split: str, seed: int, n: int, *,
                   excluded_keys: frozenset | set = frozenset()) -> Iterator[Document]:
    """Yields ``n`` documents of ``split`` ("web", "clean" or "eval"); problems whose key
    is in ``excluded_keys`` are redrawn (how held-out problems stay out of training)."""
    if split not in embedded.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {embedded.SPLITS}.")
    rng = random.Random(f"slm-forum-corpus:{seed}:{split}")
    for _ in range(n):
        count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        problems = tuple(embedded.draw_problem(rng, excluded_keys, TEMPLATES)
                         for _ in range(count))
        if split == "web":
            threads = [_thread(rng, p) for p in problems]
            yield Document("\n\n".join(t for t, _ in threads), problems,
                           sum(noise for _, noise in threads))
        else:
            yield Document("\n\n".join(p.text() for p in problems), problems)


generate_corpus = functools.partial(embedded.generate_corpus, documents=iter_documents)
generate_corpus.__doc__ = "embedded.generate_corpus over the forum threads."

__all__ = ["PROMPT_LABELS", "TEMPLATES", "generate_corpus", "iter_documents"]
