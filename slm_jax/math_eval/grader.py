"""Answer extraction, normalisation and equivalence for GSM8K- and MATH-style outputs.

extract_answer looks, in order, for "final answer is $X$", the last \\boxed{X}
(balanced braces), a "#### X" line, "the answer is X", and finally the last number.
normalize_answer strips $, units, \\text{}, \\left/\\right, thousands separators,
spaces, a trailing "." and a leading "+", and rewrites \\dfrac/\\tfrac and a/b as \\frac.
is_equiv accepts equal normalised strings, or numbers (ints, decimals, simple
fractions and their negatives) equal to a relative tolerance of 1e-4.
"""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


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
        rest = _after(text, "answer is")
        rest = re.sub(r"\.\s.*$", "", rest).strip().rstrip(".")  # first sentence only
        if rest:
            return rest.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{b} -> \\frac{1}{b}, \\frac{a}2 -> \\frac{a}{2}."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    return s


_UNIT_WORD = r"[a-zA-Z][a-zA-Z\s\.\^\d]*"


def normalize_answer(answer: str | None) -> str:
    """A canonical string for comparison (see the module docstring)."""
    if answer is None:
        return ""
    s = str(answer).strip()
    s = s.replace("\n", " ").strip()
    # Outer \boxed{...}
    boxed = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
    s = boxed if boxed is not None else s
    s = s.replace("\\$", "").replace("$", "")
    for cmd in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(cmd, "")
    s = s.replace("\\ ", " ")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # Units: a trailing \text{...} after something else, then \text{X} -> X.
    s = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z\s\.]*\}\s*$", "", s)
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.strip().rstrip(".").strip()
    # "x = 5" / "k=5": a short variable name on the left.
    m = re.match(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(.+)$", s)
    if m:
        s = m.group(1)
    # "5 dollars", "12 cm^2", "3.5 hours": a number followed by words.
    m = re.match(r"^([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+" + _UNIT_WORD + r"$", s)
    if m:
        s = m.group(1)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000 -> 1000
    s = _fix_fracs(s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    s = s.replace(" ", "")
    if s.startswith("+"):
        s = s[1:]
    s = s.rstrip(".")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)  # .5 -> 0.5
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)  # 3/4 -> \frac{3}{4}
    if re.fullmatch(r"\{[^{}]*\}", s):
        s = s[1:-1]
    return s


def to_number(s: str) -> float | None:
    """A normalised answer as a number: int, decimal, or ±\\frac{int}{int}; else None."""
    if re.fullmatch(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", s):
        return float(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m:
        num, den = float(m.group(2)), float(m.group(3))
        if den == 0:
            return None
        value = num / den
        return -value if m.group(1) else value
    return None


def is_equiv(prediction: str | None, ground_truth: str | None, rel_tol: float = 1e-4) -> bool:
    """Equal after normalisation, or numerically equal (rel_tol) when both are numbers."""
    pred, gt = normalize_answer(prediction), normalize_answer(ground_truth)
    if not pred or not gt:
        return False
    if pred == gt:
        return True
    a, b = to_number(pred), to_number(gt)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return False

