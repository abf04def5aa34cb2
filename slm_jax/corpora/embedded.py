"""A small synthetic math corpus for demos and tests, generated offline.

Rho-1 trains on a noisy web corpus while a reference model learns from a
small clean one; excess loss then singles out the tokens worth training on.
This module fakes that setting at toy scale:

* ``web``   GSM8K-style word problems with step-by-step solutions, buried in
            web boilerplate (menus, cookie banners, comment threads, URLs,
            hashes, broken HTML, timestamps) that makes up ~30-50% of tokens.
* ``clean`` the same kind of math documents, without noise (reference data).
* ``eval``  held-out clean documents; their problems never occur in ``web``
            or ``clean`` and are also written to ``eval_problems.jsonl``.

Every solution step shows its arithmetic as ``a op b = c`` with integer
operands, and every problem ends with a ``#### <answer>`` line.
Generation is pure Python and deterministic in ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Iterator

SPLITS = ("web", "clean", "eval")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem: question, solution steps and final integer answer."""

    question: str
    steps: tuple[str, ...]
    answer: int
    # Template name + drawn numbers: identifies the problem regardless of the
    # names and items used, so held-out problems can be excluded by meaning.
    key: tuple

    # How the problem and its solution are introduced (and so the eval prompt's layout).
    labels = ("Question", "Answer")

    def solution(self) -> str:
        """The worked solution, ending in the ``#### answer`` line (GSM8K layout)."""
        return "\n".join([*self.steps, f"#### {self.answer}"])

    def text(self) -> str:
        """The problem in its corpus's layout: question line, then the solution."""
        question, answer = self.labels
        return f"{question}: {self.question}\n{answer}: {self.solution()}"


PROMPT_LABELS = Problem.labels


@dataclasses.dataclass(frozen=True)
class Document:
    """A corpus document; ``noise_chars`` counts characters of web boilerplate."""

    text: str
    problems: tuple[Problem, ...]
    noise_chars: int = 0


@dataclasses.dataclass(frozen=True)
class CorpusPaths:
    """Where :func:`generate_corpus` wrote its files."""

    root: str
    jsonl: dict[str, str]
    tfrecord: dict[str, str]
    eval_problems: str
    exemplars: str  # solved clean-split problems, the few-shot examples of eval prompts

    # corpus.web_jsonl, corpus.clean_tfrecord, ...: the path of one split in one format.
    web_jsonl = property(lambda self: self.jsonl["web"])
    clean_jsonl = property(lambda self: self.jsonl["clean"])
    eval_jsonl = property(lambda self: self.jsonl["eval"])
    web_tfrecord = property(lambda self: self.tfrecord["web"])
    clean_tfrecord = property(lambda self: self.tfrecord["clean"])
    eval_tfrecord = property(lambda self: self.tfrecord["eval"])


# --------------------------------------------------------------------------
# Vocabulary of the word problems.

_NAMES = (
    "Aisha", "Ben", "Carlos", "Dana", "Elif", "Farah", "Gabriel", "Hana",
    "Ivan", "Jasmine", "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya",
    "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Ximena",
    "Yusuf", "Zoe", "Maria", "James", "Leo", "Mei",
)
_ITEMS = (
    ("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"),
    ("sticker", "stickers"), ("cupcake", "cupcakes"), ("marker", "markers"),
    ("ticket", "tickets"), ("book", "books"), ("candle", "candles"),
    ("plant", "plants"), ("toy car", "toy cars"), ("bracelet", "bracelets"),
    ("muffin", "muffins"), ("shirt", "shirts"), ("mug", "mugs"),
)
_COLLECTIBLES = ("marbles", "stamps", "cards", "shells", "coins", "beads", "stickers")
_VEHICLES = ("train", "car", "bus", "cyclist", "truck", "boat")
_GOODS = ("widgets", "bottles", "boxes", "toys", "chairs", "bolts")
_BAKED = ("cookies", "brownies", "muffins", "cupcakes", "pretzels")
_SALE_ITEMS = ("jacket", "bicycle", "lamp", "backpack", "guitar", "printer", "desk")
_PLACES = ("garden", "patio", "classroom", "parking lot", "playground", "field")


def _name_pair(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(_NAMES, 2)
    return first, second


# --------------------------------------------------------------------------
# Problem templates. Each draws numbers first, then wording, so that the key
# (template, numbers) is independent of the names and phrasing.


def _shopping_total(rng: random.Random) -> Problem:
    a, p, b, q = rng.randint(2, 12), rng.randint(2, 25), rng.randint(2, 12), rng.randint(2, 25)
    name = rng.choice(_NAMES)
    (_, item1), (_, item2) = rng.sample(_ITEMS, 2)
    x, y = a * p, b * q
    question = rng.choice((
        f"{name} buys {a} {item1} for ${p} each and {b} {item2} for ${q} each. "
        f"How much does {name} spend in total?",
        f"At the market, {name} picks up {a} {item1} at ${p} apiece and {b} {item2} "
        f"at ${q} apiece. What is the total cost in dollars?",
    ))
    steps = (
        f"The {item1} cost {a} * {p} = {x} dollars.",
        f"The {item2} cost {b} * {q} = {y} dollars.",
        f"In total {name} spends {x} + {y} = {x + y} dollars.",
    )
    return Problem(question, steps, x + y, ("shopping_total", a, p, b, q))


def _shopping_change(rng: random.Random) -> Problem:
    a, p = rng.randint(2, 9), rng.randint(3, 20)
    cost = a * p
    budget = cost + rng.randint(1, 60)
    name = rng.choice(_NAMES)
    _, item = rng.choice(_ITEMS)
    question = (
        f"{name} has ${budget}. {name} buys {a} {item} that cost ${p} each. "
        f"How many dollars does {name} have left?"
    )
    steps = (
        f"The {item} cost {a} * {p} = {cost} dollars.",
        f"{name} has {budget} - {cost} = {budget - cost} dollars left.",
    )
    return Problem(question, steps, budget - cost, ("shopping_change", a, p, budget))


def _travel_distance(rng: random.Random) -> Problem:
    s1, t1, s2, t2 = rng.randint(20, 90), rng.randint(2, 8), rng.randint(20, 90), rng.randint(1, 6)
    vehicle = rng.choice(_VEHICLES)
    d1, d2 = s1 * t1, s2 * t2
    question = (
        f"A {vehicle} travels at {s1} miles per hour for {t1} hours, then at {s2} "
        f"miles per hour for {t2} hours. How many miles does the {vehicle} travel?"
    )
    return Problem(question, (f"In the first part it covers {s1} * {t1} = {d1} miles.",
                              f"In the second part it covers {s2} * {t2} = {d2} miles.",
                              f"Altogether it travels {d1} + {d2} = {d1 + d2} miles."),
                   d1 + d2, ("travel_distance", s1, t1, s2, t2))


def _reading_days(rng: random.Random) -> Problem:
    rate, days, read_already = rng.randint(5, 40), rng.randint(3, 20), rng.randint(1, 4)
    pages = rate * (days + read_already)
    name = rng.choice(_NAMES)
    done = rate * read_already
    left = pages - done
    question = (
        f"{name} reads {rate} pages every day. The book has {pages} pages and {name} "
        f"has already read for {read_already} days. How many more days until {name} finishes?"
    )
    steps = (
        f"{name} has read {rate} * {read_already} = {done} pages so far.",
        f"There are {pages} - {done} = {left} pages left.",
        f"That takes {left} / {rate} = {days} more days.",
    )
    return Problem(question, steps, days, ("reading_days", rate, days, read_already))


def _ages(rng: random.Random) -> Problem:
    age, times, years = rng.randint(3, 15), rng.randint(2, 5), rng.randint(2, 12)
    young, old = _name_pair(rng)
    old_age = age * times
    a2, b2 = age + years, old_age + years
    question = (
        f"{young} is {age} years old. {old} is {times} times as old as {young}. "
        f"What will be the sum of their ages in {years} years?"
    )
    steps = (
        f"{old} is {age} * {times} = {old_age} years old.",
        f"In {years} years {young} will be {age} + {years} = {a2}.",
        f"In {years} years {old} will be {old_age} + {years} = {b2}.",
        f"The sum of their ages will be {a2} + {b2} = {a2 + b2}.",
    )
    return Problem(question, steps, a2 + b2, ("ages", age, times, years))


def _percent_discount(rng: random.Random) -> Problem:
    pct = rng.choice((10, 15, 20, 25, 30, 40, 50, 75))
    # Prices in steps of 20 keep every percentage of them a whole number.
    price = 20 * rng.randint(2, 40)
    item = rng.choice(_SALE_ITEMS)
    scaled = price * pct
    discount = scaled // 100
    question = (
        f"A {item} costs ${price}. During a sale the price is reduced by {pct}%. "
        f"What is the sale price of the {item} in dollars?"
    )
    steps = (
        f"The discount is {price} * {pct} = {scaled} hundredths of a dollar, "
        f"which is {scaled} / 100 = {discount} dollars.",
        f"The sale price is {price} - {discount} = {price - discount} dollars.",
    )
    return Problem(question, steps, price - discount, ("percent_discount", price, pct))


def _fraction_gift(rng: random.Random) -> Problem:
    denominator = rng.choice((3, 4, 5, 6, 8))
    numerator = rng.randint(1, denominator - 1)
    total = denominator * rng.randint(3, 25)
    giver, taker = _name_pair(rng)
    things = rng.choice(_COLLECTIBLES)
    unit = total // denominator
    given = unit * numerator
    question = (
        f"{giver} has {total} {things}. {giver} gives {numerator}/{denominator} of them "
        f"to {taker}. How many {things} does {giver} keep?"
    )
    steps = (
        f"One part is {total} / {denominator} = {unit} {things}.",
        f"{giver} gives away {unit} * {numerator} = {given} {things}.",
        f"{giver} keeps {total} - {given} = {total - given} {things}.",
    )
    return Problem(question, steps, total - given, ("fraction_gift", total, numerator, denominator))


def _area_cost(rng: random.Random) -> Problem:
    length, width, price = rng.randint(4, 30), rng.randint(3, 20), rng.randint(2, 15)
    place = rng.choice(_PLACES)
    area = length * width
    question = (
        f"A rectangular {place} is {length} meters long and {width} meters wide. "
        f"Covering it costs ${price} per square meter. How much does it cost to cover the {place}?"
    )
    steps = (
        f"The area is {length} * {width} = {area} square meters.",
        f"The cost is {area} * {price} = {area * price} dollars.",
    )
    return Problem(question, steps, area * price, ("area_cost", length, width, price))


def _perimeter_fence(rng: random.Random) -> Problem:
    length, width = rng.randint(5, 60), rng.randint(4, 40)
    place = rng.choice(_PLACES)
    half = length + width
    question = (
        f"How many meters of fence are needed to go around a rectangular {place} "
        f"that is {length} meters long and {width} meters wide?"
    )
    steps = (
        f"One length and one width add up to {length} + {width} = {half} meters.",
        f"The fence is {half} * 2 = {half * 2} meters long.",
    )
    return Problem(question, steps, half * 2, ("perimeter_fence", length, width))


def _equal_sharing(rng: random.Random) -> Problem:
    friends, each, kept = rng.randint(2, 12), rng.randint(2, 15), rng.randint(1, 10)
    baked = friends * each + kept
    name = rng.choice(_NAMES)
    food = rng.choice(_BAKED)
    shared = baked - kept
    question = (
        f"{name} baked {baked} {food}, kept {kept} and shared the rest equally among "
        f"{friends} friends. How many {food} did each friend get?"
    )
    steps = (
        f"{name} shared {baked} - {kept} = {shared} {food}.",
        f"Each friend got {shared} / {friends} = {each} {food}.",
    )
    return Problem(question, steps, each, ("equal_sharing", friends, each, kept))


def _factory_stock(rng: random.Random) -> Problem:
    per_hour, hours, days = rng.randint(5, 60), rng.randint(4, 12), rng.randint(2, 9)
    made = per_hour * hours
    shipped = rng.randint(1, made - 1)
    goods = rng.choice(_GOODS)
    left = made - shipped
    question = (
        f"A factory makes {per_hour} {goods} per hour and runs {hours} hours a day. "
        f"It ships {shipped} {goods} each day. How many {goods} pile up in the "
        f"warehouse after {days} days?"
    )
    steps = (
        f"Each day it makes {per_hour} * {hours} = {made} {goods}.",
        f"Each day {made} - {shipped} = {left} {goods} stay in the warehouse.",
        f"After {days} days there are {left} * {days} = {left * days} {goods}.",
    )
    return Problem(question, steps, left * days, ("factory_stock", per_hour, hours, shipped, days))


def _weekly_wages(rng: random.Random) -> Problem:
    wage, hours, extra, weeks = rng.randint(8, 30), rng.randint(10, 40), rng.randint(1, 10), rng.randint(2, 6)
    overtime_wage = wage + rng.randint(2, 10)
    name = rng.choice(_NAMES)
    base, over = wage * hours, overtime_wage * extra
    week = base + over
    question = (
        f"{name} earns ${wage} an hour for the first {hours} hours each week and "
        f"${overtime_wage} an hour for overtime. {name} works {hours + extra} hours "
        f"every week. How much does {name} earn in {weeks} weeks?"
    )
    steps = (
        f"{name} works {hours + extra} - {hours} = {extra} overtime hours a week.",
        f"Regular pay is {wage} * {hours} = {base} dollars.",
        f"Overtime pay is {overtime_wage} * {extra} = {over} dollars.",
        f"Each week {name} earns {base} + {over} = {week} dollars.",
        f"In {weeks} weeks that is {week} * {weeks} = {week * weeks} dollars.",
    )
    return Problem(question, steps, week * weeks, ("weekly_wages", wage, hours, extra, weeks, overtime_wage))


def _savings(rng: random.Random) -> Problem:
    weekly, weeks = rng.randint(5, 50), rng.randint(3, 20)
    saved = weekly * weeks
    spent = rng.randint(1, saved)
    name, (_, item) = rng.choice(_NAMES), rng.choice(_ITEMS)
    question = (
        f"{name} saves ${weekly} every week for {weeks} weeks and then spends ${spent} "
        f"on {item}. How many dollars does {name} have left?"
    )
    return Problem(question, (f"{name} saves {weekly} * {weeks} = {saved} dollars.",
                              f"After shopping {name} has {saved} - {spent} = {saved - spent} "
                              "dollars."), saved - spent, ("savings", weekly, weeks, spent))


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _shopping_total, _shopping_change, _travel_distance, _reading_days, _ages,
    _percent_discount, _fraction_gift, _area_cost, _perimeter_fence,
    _equal_sharing, _factory_stock, _weekly_wages, _savings,
)


# --------------------------------------------------------------------------
# Web boilerplate. Block noise becomes whole lines; inline noise is spliced
# into question sentences between words.

_NAV_WORDS = ("Home", "Forums", "Login", "Register", "Search", "Help", "Members",
              "Calendar", "FAQ", "Contact", "Latest", "Tags", "Blog", "Archive")
_SITES = ("mathhelpboards", "homework-hub", "algebra-forum", "studyden", "mathchat", "qna-site")


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _timestamp(rng: random.Random) -> str:
    return (f"{rng.randint(2009, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")


def _url(rng: random.Random) -> str:
    slug = "-".join(rng.sample(("how", "to", "solve", "word", "problem", "help", "math", "homework", "easy"), 3))
    return (f"https://www.{rng.choice(_SITES)}.com/t/{slug}-{rng.randint(1000, 999999)}"
            f"?ref=sidebar&utm_source={rng.choice(('feed', 'mail', 'share'))}&sid={_hex(rng, 8)}")


def _nav_bar(rng: random.Random) -> str:
    return " | ".join(rng.sample(_NAV_WORDS, rng.randint(4, 8)))


def _cookie_banner(rng: random.Random) -> str:
    return rng.choice((
        "We use cookies to improve your experience. By continuing to browse you agree to our Cookie Policy. [Accept] [Decline]",
        "This site uses cookies and similar technologies. Manage preferences | Accept all cookies",
        "Cookie notice: we and our partners store data on your device. OK, got it",
    ))


def _comment(rng: random.Random) -> str:
    user = rng.choice(("user", "guest", "mathfan", "anon", "student"))
    return (f"Posted by {user}_{rng.randint(100, 99999)} on {_timestamp(rng)[:10]} "
            f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} {rng.choice(('AM', 'PM'))} | "
            f"{rng.choice(('Reply', 'Quote | Reply', 'Report | Reply'))} | {rng.randint(0, 99)} likes")


def _html_block(rng: random.Random) -> str:
    cls = rng.choice(("post-body", "sidebar", "ad-slot", "thread-meta", "nav-item", "footer"))
    return rng.choice((
        f'<div class="{cls}" id="p{rng.randint(1000, 99999)}">',
        f'<li class="{cls}"><a href="/thread/{rng.randint(100, 99999)}">',
        f'</span></div>&nbsp;&nbsp;<div class="{cls}">',
        f'<script type="text/javascript">var _q = "{_hex(rng, 12)}";',
        f'<img src="/static/img/{_hex(rng, 10)}.png" alt="">',
    ))


def _meta_line(rng: random.Random) -> str:
    return rng.choice((
        f"Last edited {_timestamp(rng)} | views {rng.randint(10, 90000)}",
        f"Source: {_url(rng)}",
        f"Share: Facebook Twitter Reddit Email | Permalink {_url(rng)}",
        f"Advertisement | Sponsored content id={_hex(rng, 16)}",
        f"commit {_hex(rng, 40)}",
        f"Thread #{rng.randint(1000, 999999)} | {rng.randint(1, 40)} replies | sort by newest",
    ))


_BLOCK_NOISE = (_nav_bar, _cookie_banner, _comment, _html_block, _meta_line)


def _inline_noise(rng: random.Random) -> str:
    return rng.choice((
        "&nbsp;", "<br>", "<b>", "</i>", "<span class=\"hl\">", "[edit]",
        f"<a href=\"{_url(rng)}\">", f"#{_hex(rng, 6)}", f"(id:{rng.randint(100, 99999)})",
        "&amp;", "</p><p>",
    ))


def _add_web_noise(rng: random.Random, lines: list[str]) -> tuple[str, int]:
    """Interleaves boilerplate with the math lines until it is 30-50% of the text.

    Shares are measured in characters, a closer proxy for subword tokens than
    words (a 40-character hash is one word but dozens of tokens). Inline
    noise only goes into question lines, which hold no equations, so every
    ``a op b = c`` step and ``#### answer`` line stays intact.
    """
    math_chars = sum(len(line) for line in lines)
    target_fraction = rng.uniform(0.3, 0.5)
    target_noise = int(math_chars * target_fraction / (1.0 - target_fraction))
    lines = list(lines)
    noise_chars = 0
    while noise_chars < target_noise:
        if rng.random() < 0.4:
            question_rows = [i for i, line in enumerate(lines) if line.startswith("Question: ")]
            row = rng.choice(question_rows)
            words = lines[row].split(" ")
            fragment = _inline_noise(rng)
            words.insert(rng.randint(2, len(words) - 1), fragment)
            lines[row] = " ".join(words)
        else:
            fragment = rng.choice(_BLOCK_NOISE)(rng)
            lines.insert(rng.randint(0, len(lines)), fragment)
        noise_chars += len(fragment) + 1  # plus its separating space or newline
    return "\n".join(lines), noise_chars


# --------------------------------------------------------------------------
# Documents and splits.


def _split_rng(seed: int, split: str) -> random.Random:
    # String seeds hash via sha512, so streams are stable across processes.
    return random.Random(f"slm-demo-corpus:{seed}:{split}")


def draw_problem(rng: random.Random, excluded: set, templates=None) -> Problem:
    """A problem of one of `templates` (default: this corpus's) whose key is not excluded."""
    while True:
        problem = rng.choice(templates or TEMPLATES)(rng)
        if problem.key not in excluded:
            return problem


def iter_documents(
    split: str, seed: int, n: int, *, excluded_keys: frozenset | set = frozenset()
) -> Iterator[Document]:
    """Yields ``n`` documents of ``split`` ("web", "clean" or "eval").

    Problems whose key is in ``excluded_keys`` are redrawn, which is how the
    held-out eval problems are kept out of the training splits.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    rng = _split_rng(seed, split)
    for _ in range(n):
        count = rng.choices((1, 2, 3, 4), weights=(4, 3, 2, 1))[0]
        problems = tuple(draw_problem(rng, excluded_keys) for _ in range(count))
        blocks = [p.text() for p in problems]
        if split == "web":
            lines = "\n\n".join(blocks).split("\n")
            text, noise = _add_web_noise(rng, lines)
            yield Document(text, problems, noise)
        else:
            yield Document("\n\n".join(blocks), problems)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate_corpus(
    out_dir: str,
    *,
    seed: int = 0,
    n_web_docs: int = 3000,
    n_clean_docs: int = 1500,
    n_eval_docs: int = 200,
    documents: Callable[..., Iterator[Document]] = iter_documents,
) -> CorpusPaths:
    """Writes the demo corpus under ``out_dir`` and returns the file paths.

    Files: ``{web,clean,eval}.jsonl`` (``{"text": ...}`` per line),
    ``{web,clean,eval}.tfrecord`` (``tf.train.Example`` with bytes feature
    ``"text"``), ``eval_problems.jsonl`` (``{"question", "answer"}``) and
    ``exemplars.jsonl`` (8 clean-split problems, also with their ``solution``).
    ``documents`` is the split generator (this corpus's, or e.g. forum's).
    Same seed, same bytes.
    """
    # Deferred: TensorFlow is only needed to write the TFRecord copies.
    from slm_jax.data.tasks import write_text_tfrecord

    os.makedirs(out_dir, exist_ok=True)
    eval_docs = list(documents("eval", seed, n_eval_docs))
    eval_problems = [p for doc in eval_docs for p in doc.problems]
    held_out = {p.key for p in eval_problems}
    splits = {
        "web": list(documents("web", seed, n_web_docs, excluded_keys=held_out)),
        "clean": list(documents("clean", seed, n_clean_docs, excluded_keys=held_out)),
        "eval": eval_docs,
    }
    jsonl, tfrecord = {}, {}
    for split, docs in splits.items():
        jsonl[split] = os.path.join(out_dir, f"{split}.jsonl")
        tfrecord[split] = os.path.join(out_dir, f"{split}.tfrecord")
        _write_jsonl(jsonl[split], [{"text": d.text} for d in docs])
        write_text_tfrecord([d.text for d in docs], tfrecord[split])
    eval_path = os.path.join(out_dir, "eval_problems.jsonl")
    _write_jsonl(eval_path, [{"question": p.question, "answer": str(p.answer)} for p in eval_problems])
    exemplars = [p for doc in splits["clean"] for p in doc.problems][:8]
    exemplar_path = os.path.join(out_dir, "exemplars.jsonl")
    _write_jsonl(exemplar_path, [{"question": p.question, "answer": str(p.answer),
                                  "solution": p.solution()} for p in exemplars])
    return CorpusPaths(root=out_dir, jsonl=jsonl, tfrecord=tfrecord, eval_problems=eval_path,
                       exemplars=exemplar_path)


__all__ = ["CorpusPaths", "Document", "Problem", "SPLITS", "TEMPLATES", "generate_corpus", "iter_documents"]
