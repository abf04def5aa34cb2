"""Grading GSM8K- and MATH-style outputs: extract the final answer, check it with math-verify.

`grade(generation, gold)` is the one grading path: the `eval` job, the in-training
few-shot hook and the `experiment` job all call it.

extract_answer looks, in order, for "final answer is $X$", the last \\boxed{X}
(balanced braces), a "#### X" line, "the answer is X" (a number followed by words
keeps the number: "18 dollars" -> "18"), and finally the last number.

is_equiv reads both answers as LaTeX math and asks math-verify (HuggingFace's
verifier, what lm-eval's minerva_math and open leaderboards use) whether they are the
same: symbolic equality (2\\sqrt{2} = \\sqrt{8}), numbers in any notation (\\frac{1}{2},
0.5, 1/2, 50\\%), intervals, sets and tuples, units in \\text{}, \\boxed{}, "x = 5".
Answers it cannot parse are equal only when their text is (spaces and $ aside).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# A number, then words: "18 dollars", "$5 per hour" (units a verifier reads as variables).
_NUMBER_THEN_WORDS = re.compile(r"^(\\?\$?\s*-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+[A-Za-z]")
_TIMEOUT_S = 5


@dataclasses.dataclass(frozen=True)
class Grade:
    prediction: str   # the extracted final answer ("" when there is none)
    correct: bool


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced; \\boxed 5 too."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*", text)]
    for m in reversed(starts):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j]
            continue  # unbalanced: try an earlier one
        bare = re.match(r"([^\s$]+)", text[i:])
        if bare:
            return bare.group(1)
    return None


def _after(text: str, marker: str) -> str:
    """Text after the last (case-insensitive) marker, up to the end of that line."""
    idx = text.lower().rfind(marker)
    rest = text[idx + len(marker):].lstrip(" :")
    return rest.split("\n")[0].strip()


def _stated_answer(text: str) -> str:
    """The first sentence after "answer is", a leading number without its unit words."""
    rest = re.sub(r"\.\s.*$", "", _after(text, "answer is")).strip().rstrip(".").strip()
    number = _NUMBER_THEN_WORDS.match(rest)
    return number.group(1) if number else rest


def extract_answer(text: str) -> str:
    """The final answer in a generated solution ("" when there is none)."""
    final = re.findall(r"final answer is\s*\$(.+?)\$", text, flags=re.IGNORECASE | re.DOTALL)
    if final:
        inner = final[-1]
        return last_boxed(inner) or inner.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    if "answer is" in text.lower():
        stated = _stated_answer(text)
        if stated:
            return stated
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def _timeout() -> int | None:
    # math-verify times out by SIGALRM, which only the main thread may set.
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _as_math(answer: str) -> str:
    """An extracted answer as LaTeX math: "\\$" is a currency sign, not a delimiter."""
    text = answer.strip().replace("\\$", "")
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def _math_verify():
    # Imported on first use: jobs that never grade start without sympy and its parser.
    try:
        import math_verify
    except ImportError as e:
        raise ImportError("grading math answers needs math-verify: pip install "
                          "math-verify==0.9.0") from e
    return math_verify


@functools.lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple:
    return tuple(_math_verify().parse(_as_math(answer), parsing_timeout=_timeout()))


def _plain(answer: str) -> str:
    return re.sub(r"[\s$]", "", answer)


def is_equiv(prediction: str | None, gold: str | None) -> bool:
    """Whether math-verify finds `prediction` equal to `gold` (see the module docstring)."""
    prediction, gold = (prediction or "").strip(), (gold or "").strip()
    if not prediction or not gold:
        return False
    gold_parsed, prediction_parsed = _parsed(gold), _parsed(prediction)
    if gold_parsed and prediction_parsed and _math_verify().verify(
            list(gold_parsed), list(prediction_parsed), timeout_seconds=_timeout()):
        return True
    return _plain(prediction) == _plain(gold)


def grade(generation: str, gold: str) -> Grade:
    """The final answer of a generated solution and whether it equals `gold`."""
    prediction = extract_answer(generation or "")
    return Grade(prediction, is_equiv(prediction, gold))
