"""Deterministic synthetic chat data: the shipped example datasets and exact-length benchmark rows.

Everything here is seeded and stdlib-only (the tokenizer is needed only for exact-length rows), so
``python -m qwenrecipes.data.synthetic recipes/data/chat.jsonl`` regenerates byte-identical files.
The answers are computed, not made up, so a model fine-tuned on them learns nothing false.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError

Message = dict[str, str]
Row = dict[str, list[Message]]
# One task: (user question, assistant answer, reasoning that leads to the answer).
Task = tuple[str, str, str]

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one or two sentences.",
    "You are a friendly tutor who explains things simply.",
    "You are a precise assistant. Give exact answers.",
    "You are a helpful assistant. Reply in the language of the question when you can.",
    "You are a coding assistant. Put code in fenced blocks.",
)

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo (東京)"), ("Colombia", "Bogotá"),
    ("Brazil", "Brasília"), ("Iceland", "Reykjavík"), ("China", "Beijing (北京)"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Mexico", "Mexico City (Ciudad de México)"),
    ("South Korea", "Seoul (서울)"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Turkey", "Ankara"), ("Vietnam", "Hanoi (Hà Nội)"),
    ("Portugal", "Lisbon"), ("Argentina", "Buenos Aires"), ("India", "New Delhi"),
)

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("a prime number", "A prime number is a whole number greater than 1 whose only divisors are 1 and "
                       "itself."),
    ("photosynthesis", "Photosynthesis is the process by which plants use light, water and carbon dioxide "
                       "to make sugar and release oxygen."),
    ("an algorithm", "An algorithm is a finite sequence of precise steps that solves a problem."),
    ("a noun", "A noun is a word that names a person, place, thing or idea."),
    ("gravity", "Gravity is the force by which masses attract each other."),
    ("a compiler", "A compiler is a program that translates source code into machine code or another "
                   "lower-level language."),
    ("an atom", "An atom is the smallest unit of a chemical element."),
    ("inflation", "Inflation is the general rise of prices over time, which lowers what money can buy."),
    ("a haiku", "A haiku is a short Japanese poem of three lines with 5, 7 and 5 syllables."),
    ("a palindrome", "A palindrome is a word or phrase that reads the same backwards, like “level”."),
    ("recursion", "Recursion is when a function solves a problem by calling itself on a smaller part of it."),
    ("a café", "A café is a small restaurant that serves coffee, drinks and light meals."),
)

WORDS: tuple[str, ...] = (
    "hello", "python", "banana", "café", "naïve", "river", "señor", "straße", "level", "kitten",
    "über", "garden", "résumé", "orange", "piñata", "galaxy", "keyboard", "jalapeño", "mountain", "zebra",
)

TRANSLATIONS: tuple[tuple[str, str, str], ...] = (
    ("thank you", "Japanese", "ありがとう (arigatō)"), ("hello", "Chinese", "你好 (nǐ hǎo)"),
    ("good morning", "Spanish", "buenos días"), ("thank you", "French", "merci"),
    ("goodbye", "German", "auf Wiedersehen"), ("hello", "Korean", "안녕하세요 (annyeonghaseyo)"),
    ("cat", "Japanese", "猫 (neko)"), ("water", "Chinese", "水 (shuǐ)"), ("friend", "Portuguese", "amigo"),
    ("please", "Italian", "per favore"),
)

EMOJI: tuple[tuple[str, str], ...] = (
    ("a cat", "🐱"), ("the sun", "☀️"), ("a rocket", "🚀"), ("pizza", "🍕"), ("a heart", "❤️"),
    ("rain", "🌧️"), ("a book", "📚"), ("a tree", "🌳"), ("coffee", "☕"), ("music", "🎵"),
)

# Code tasks: (description, function name, argument list, body expression).
CODE_TASKS: tuple[tuple[str, str, str, str], ...] = (
    ("returns the square of a number", "square", "x", "x * x"),
    ("returns the larger of two numbers", "larger", "a, b", "a if a > b else b"),
    ("reverses a string", "reverse", "s", "s[::-1]"),
    ("checks whether a number is even", "is_even", "n", "n % 2 == 0"),
    ("returns the sum of a list", "total", "items", "sum(items)"),
    ("counts the vowels in a string", "count_vowels", "s", 'sum(c in "aeiou" for c in s.lower())'),
    ("converts Celsius to Fahrenheit", "c_to_f", "c", "c * 9 / 5 + 32"),
    ("returns the last element of a list", "last", "items", "items[-1]"),
)

CJK_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("日本的首都是哪里？", "日本的首都是东京。"),
    ("中国的首都是哪里？", "中国的首都是北京。"),
    ("一加一等于几？", "一加一等于二。"),
    ("「ありがとう」は英語で何ですか？", "「ありがとう」は英語で “thank you” です。"),
    ("Qu'est-ce qu'un café au lait ?", "C'est un café avec du lait chaud."),
    ("¿Cuántos días tiene una semana?", "Una semana tiene siete días."),
)


def _arithmetic(rng: random.Random) -> Task:
    op = rng.choice("+-*/")
    if op == "/":
        b = rng.randint(2, 12)
        result = rng.randint(2, 30)
        a = b * result  # exact division, so the answer is an integer
    else:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        result = a + b if op == "+" else a - b if op == "-" else a * b
    shown = {"*": "×", "/": "÷"}.get(op, op)
    question = rng.choice([f"What is {a} {shown} {b}?", f"Compute {a} {op} {b}.",
                           f"How much is {a} {shown} {b}?"])
    return question, f"{a} {shown} {b} = {result}.", f"I need {a} {shown} {b}. That gives {result}."


def _conversion(rng: random.Random) -> Task:
    kind = rng.randrange(5)
    if kind == 0:
        km = rng.randint(1, 50)
        return (f"How many meters are in {km} km?", f"{km} km is {km * 1000} meters.",
                f"1 km is 1000 m, so {km} km is {km} × 1000 = {km * 1000} m.")
    if kind == 1:
        h = rng.randint(1, 24)
        return (f"How many minutes are in {h} hours?", f"{h} hours is {h * 60} minutes.",
                f"Each hour has 60 minutes: {h} × 60 = {h * 60}.")
    if kind == 2:
        c = rng.choice(range(-40, 105, 5))
        f = c * 9 // 5 + 32  # c is a multiple of 5, so this is exact
        return (f"Convert {c} °C to Fahrenheit.", f"{c} °C is {f} °F.",
                f"F = C × 9/5 + 32 = {c} × 9/5 + 32 = {f}.")
    if kind == 3:
        kg = rng.randint(1, 20)
        return (f"How many grams is {kg} kg?", f"{kg} kg is {kg * 1000} grams.",
                f"1 kg is 1000 g, so {kg} kg is {kg * 1000} g.")
    inches = rng.randint(1, 40)
    cm = f"{inches * 254 / 100:g}"
    return (f"How many centimeters are in {inches} inches?", f"{inches} inches is {cm} cm.",
            f"One inch is exactly 2.54 cm, so {inches} × 2.54 = {cm}.")


def _capital(rng: random.Random) -> Task:
    country, city = rng.choice(CAPITALS)
    return (f"What is the capital of {country}?", f"The capital of {country} is {city}.",
            f"The capital city of {country} is {city}.")


def _reverse(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    return (f"Reverse the string “{word}”.", f"“{word}” reversed is “{word[::-1]}”.",
            f"Reading “{word}” from the last character to the first gives “{word[::-1]}”.")


def _definition(rng: random.Random) -> Task:
    term, text = rng.choice(DEFINITIONS)
    question = rng.choice([f"What is {term}?", f"Define {term} in one sentence.",
                           f"Briefly, what is {term}?"])
    return question, text, f"The user wants a short definition of {term}. One sentence is enough."


def _code(rng: random.Random) -> Task:
    description, name, args, body = rng.choice(CODE_TASKS)
    answer = f"```python\ndef {name}({args}):\n    return {body}\n```"
    return (f"Write a Python function that {description}.", answer,
            f"A one-line function suffices: return {body}.")


def _unicode(rng: random.Random) -> Task:
    kind = rng.randrange(3)
    if kind == 0:
        english, language, word = rng.choice(TRANSLATIONS)
        return (f"How do you say “{english}” in {language}?", f"In {language}, “{english}” is {word}.",
                f"The {language} for “{english}” is {word}.")
    if kind == 1:
        thing, emoji = rng.choice(EMOJI)
        return (f"Which emoji stands for {thing}?", f"{emoji} is the usual emoji for {thing}.",
                f"The common emoji for {thing} is {emoji}.")
    question, answer = rng.choice(CJK_QUESTIONS)
    return question, answer, "The question is not in English, so I answer in its language."


TASKS: tuple[Callable[[random.Random], Task], ...] = (
    _arithmetic, _conversion, _capital, _reverse, _definition, _code, _unicode,
)


def _conversation(rng: random.Random, *, reasoning: bool) -> Row:
    messages: list[Message] = []
    # About a third of conversations get a system prompt, as in real chat data.
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    # Half single-turn, the rest 2–4 user turns.
    n_turns = 1 if rng.random() < 0.5 else rng.randint(2, 4)
    for _ in range(n_turns):
        question, answer, thought = rng.choice(TASKS)(rng)
        messages.append({"role": "user", "content": question})
        assistant: Message = {"role": "assistant", "content": answer}
        if reasoning:
            assistant["reasoning_content"] = thought
        messages.append(assistant)
    return {"messages": messages}


def generate_chat_rows(n_rows: int = 300, seed: int = 0) -> list[Row]:
    """``n_rows`` short ChatML conversations in ``messages`` format, without any thinking text."""
    rng = random.Random(seed)
    return [_conversation(rng, reasoning=False) for _ in range(n_rows)]


def generate_reasoning_rows(n_rows: int = 40, seed: int = 1) -> list[Row]:
    """Like :func:`generate_chat_rows`, but every assistant turn also carries ``reasoning_content``."""
    rng = random.Random(seed)
    return [_conversation(rng, reasoning=True) for _ in range(n_rows)]


def render_chatml(messages: Sequence[Message]) -> str:
    """Plain ChatML (no think block, no generation prompt): the text the exact-length rows are measured on."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


# Filler words for exact-length rows; each is one Qwen3 token when preceded by a space (checked at runtime).
_FILLER: tuple[str, ...] = (
    "the", "model", "reads", "a", "long", "story", "about", "quiet", "river", "that", "runs", "through",
    "green", "hills", "and", "old", "towns", "where", "people", "walk", "to", "market", "every", "morning",
    "buy", "bread", "fruit", "fresh", "fish", "while", "children", "play", "near", "water", "birds", "sing",
    "in", "tall", "trees", "under", "bright", "blue", "sky",
)
_TOPICS = ("rivers", "mountains", "cities", "forests", "oceans", "deserts", "islands", "gardens")


def synthetic_chatml_rows(n_rows: int, n_tokens: int | Sequence[int], seed: int) -> list[dict[str, Any]]:
    """``n_rows`` user+assistant conversations, each exactly ``n_tokens`` Qwen3 tokens under plain ChatML (or
    ``n_tokens[i]`` for row i: a length distribution, data/lengths.py).

    Used by benchmarks so every engine sees identical, fixed-length sequences (at least 24 tokens).
    The assistant text is padded with words that are single tokens after a space: byte-level BPE never
    merges across the pre-tokenizer's word boundaries, so each added word adds exactly one token.
    """
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    fillers = [w for w in _FILLER if count(" " + w) == 1]
    # Single-token topics keep the shortest row the same length for every topic.
    topics = [t for t in _TOPICS if count(" " + t) == 1]
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    targets = [n_tokens] * n_rows if isinstance(n_tokens, int) else list(n_tokens)[:n_rows]
    for target in targets:
        topic = rng.choice(topics)
        user = f"Write a long paragraph about {topic}."
        head = f"Here is a paragraph about {topic}."
        shortest = [{"role": "user", "content": user}, {"role": "assistant", "content": head}]
        base = count(render_chatml(shortest))
        if target < base:
            raise QwenRecipesError(f"target={target} is below the shortest possible row ({base} tokens)")
        words = [head]
        for i in range(target - base):
            # A full stop every ~12 words keeps it looking like prose; "." is its own token too.
            words.append("." if i % 12 == 11 and words[-1] != "." else " " + rng.choice(fillers))
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(words)}]
        actual = count(render_chatml(messages))
        if actual != target:  # guards the one-token-per-word argument above
            raise QwenRecipesError(f"internal error: synthetic row has {actual} tokens, wanted {target}")
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8 kept readable (no \\u escapes), stable key order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qwenrecipes.data.synthetic OUT.jsonl [--kind chat|reasoning] [--rows N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m qwenrecipes.data.synthetic", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=("chat", "reasoning"), default="chat")
    parser.add_argument("--rows", type=int, default=None, help="default: 300 for chat, 40 for reasoning")
    parser.add_argument("--seed", type=int, default=None, help="default: 0 for chat, 1 for reasoning")
    args = parser.parse_args(argv)
    if args.kind == "chat":
        rows = generate_chat_rows(args.rows or 300, 0 if args.seed is None else args.seed)
    else:
        rows = generate_reasoning_rows(args.rows or 40, 1 if args.seed is None else args.seed)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
