"""A small chat dataset, generated reproducibly, whose reply lengths follow a published chat
distribution: `config/datasets/smol-chat.jsonl` (scripts/make_chat_dataset.py).

- Prompts: a question from `QUESTIONS` (everyday chat requests with short answers, written for
  this project: open requests such as packing lists made SmolLM2-135M run to any cap),
  preceded for some records by background sentences; the number of background words is drawn
  (then rounded up to whole sentences) from a Pareto distribution with shape 2.5 (the input-length shape of ML.ENERGY's
  `LengthControl` workload, ml-energy/benchmark mlenergy/benchmark/llm/workloads.py at
  c1d6557) scaled to a mean of `CONTEXT_MEAN_WORDS` for a small model on a CPU.
- Replies: their length, in words, is drawn from the output-length histogram that the
  ML.ENERGY leaderboard publishes for Llama-3.1-8B-Instruct on its LMArena chat task
  (`OUTPUT_HISTOGRAM`); the words are common English words that byte-level BPE tokenizers
  (GPT-2, Llama 3, SmolLM2) keep as one token each, so a reply's token count is close to its
  word count. With `output_tokens: dataset` each reply's token count is the request's target
  length; with `natural` lengths the model decides and the replies do not matter.

Records are OpenAI `messages` (user, then assistant) plus an `id`: `workload.dataset.format:
messages`. The same seed gives the same file byte for byte."""

from __future__ import annotations

import json
import random
from pathlib import Path

#: ML.ENERGY leaderboard, ml-energy/leaderboard at 0cd52dab897c5d91a45f4d413038f3b8b4251b0f,
#: public/data/models/meta-llama__Llama-3.1-8B-Instruct__lm-arena-chat.json,
#: `output_length_distribution`: 50 equal bins from 2 to 4096 tokens (39,936 requests; the
#: last bin holds the requests cut at the benchmark's 4096-token cap).
OUTPUT_HISTOGRAM_SOURCE = ("ml-energy/leaderboard@0cd52dab897c5d91a45f4d413038f3b8b4251b0f:"
                           "public/data/models/meta-llama__Llama-3.1-8B-Instruct__"
                           "lm-arena-chat.json output_length_distribution")
OUTPUT_HISTOGRAM_RANGE = (2.0, 4096.0)
OUTPUT_HISTOGRAM = (
    8607, 4310, 3518, 3645, 3626, 3541, 3242, 2563, 1856, 1269, 877, 641, 455, 337, 268, 207,
    141, 118, 101, 83, 53, 46, 51, 42, 38, 37, 28, 21, 15, 22, 18, 13, 11, 11, 7, 13, 8, 7, 2,
    6, 0, 3, 3, 3, 1, 0, 2, 1, 1, 68)

#: Shape of the Pareto distribution of background words (ML.ENERGY `LengthControl.pareto_a`).
PARETO_SHAPE = 2.5
#: Mean number of background words over the records that get background.
CONTEXT_MEAN_WORDS = 40.0
#: Share of records with background sentences before the question.
CONTEXT_SHARE = 0.5
DEFAULT_SEED = 20261130
DEFAULT_RECORDS = 64

QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "What is the capital of Italy?",
    "What is the boiling point of water at sea level in Celsius?",
    "Translate 'good morning' into Spanish.",
    "Suggest a name for a small coffee shop. Answer with the name only.",
    "In one sentence, what does a compiler do?",
    "Write a haiku about autumn leaves.",
    "Is a tomato a fruit or a vegetable?",
    "What is the largest planet in our solar system?",
    "How many minutes should green tea steep?",
    "Name three primary colors.",
    "What is 15 multiplied by 12?",
    "Explain in one sentence what photosynthesis is.",
    "What is the difference between weather and climate?",
    "Write a one-line thank-you note to a colleague.",
    "Which ocean is the largest?",
    "What is a good stretching exercise for the back?",
    "Summarize the plot of Cinderella in two sentences.",
    "How many continents are there?",
    "What is the chemical symbol for gold?",
    "Give me a synonym for 'happy'.",
    "How many hours are there in a day?",
    "How does a rainbow form?",
    "Name one hobby for someone who likes being outdoors.",
    "What is the square root of 81?",
    "Write a two-line poem about the sea.",
    "What language is spoken in Brazil?",
    "Why is the sky blue?",
    "List four kinds of fruit that are rich in vitamin C.",
    "What is the freezing point of water in Fahrenheit?",
    "How can I improve my handwriting?",
    "What is a noun? Give an example.",
    "Describe a cat in three words.",
    "What color do you get by mixing blue and yellow?",
    "What is the opposite of 'ancient'?",
    "How many legs does a spider have?",
    "Write a friendly reminder that a meeting starts at 10 am.",
    "What is the main ingredient of guacamole?",
    "Explain what a password manager is.",
    "What is the tallest mountain on Earth?",
    "How many hearts does an octopus have?",
    "How do you say 'thank you' in Japanese?",
    "What are the three states of matter?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "What is the speed of light, roughly?",
    "Write a one-sentence story about a lost key.",
    "What is the capital of Japan?",
)

#: Background sentences (written for this project), drawn in order from a random start.
BACKGROUND = (
    "I am planning my week and want to keep things simple.",
    "My friend asked me this yesterday and I was not sure.",
    "I am studying for a quiz at school.",
    "We were talking about it over dinner last night.",
    "I read something about it in a magazine but forgot the details.",
    "I like short and clear answers.",
    "This is for a small note I am writing for my family.",
    "I want to explain it to my younger brother.",
    "I have a few minutes before my train arrives.",
    "My teacher said it would come up again next week.",
    "I am new to this topic, so please keep it easy.",
    "It came up during a game night with friends.",
)

#: Words that byte-level BPE vocabularies hold as one token each (with the leading space).
REPLY_WORDS = ("the", "and", "of", "to", "in", "is", "it", "that", "for", "on", "with", "as",
               "was", "at", "by", "this", "from", "but", "not", "or", "have", "are", "one",
               "all", "can", "time", "more", "water", "day", "good", "new", "way", "people")


def draw_reply_words(rng: random.Random) -> int:
    """A reply length, words: a bin of `OUTPUT_HISTOGRAM` with its count as weight, then a
    whole number uniformly inside it."""
    low, high = OUTPUT_HISTOGRAM_RANGE
    width = (high - low) / len(OUTPUT_HISTOGRAM)
    (index,) = rng.choices(range(len(OUTPUT_HISTOGRAM)), weights=OUTPUT_HISTOGRAM)
    start = low + index * width
    return max(1, rng.randint(int(start + 0.999), int(start + width)))


def draw_context_words(rng: random.Random) -> int:
    """Background words before the question: 0 for 1 - CONTEXT_SHARE of the records, else
    Pareto(PARETO_SHAPE) with mean CONTEXT_MEAN_WORDS (scale = mean (a - 1) / a)."""
    if rng.random() >= CONTEXT_SHARE:
        return 0
    scale = CONTEXT_MEAN_WORDS * (PARETO_SHAPE - 1) / PARETO_SHAPE
    return round(scale * rng.paretovariate(PARETO_SHAPE))


def _background(rng: random.Random, words: int) -> str:
    """Whole background sentences, from a random one on, until at least `words` words."""
    if words <= 0:
        return ""
    start = rng.randrange(len(BACKGROUND))
    out: list[str] = []
    while sum(len(sentence.split()) for sentence in out) < words:
        out.append(BACKGROUND[(start + len(out)) % len(BACKGROUND)])
    return " ".join(out)


def make_records(num_records: int = DEFAULT_RECORDS, seed: int = DEFAULT_SEED) -> list[dict]:
    """`num_records` chat records (OpenAI messages), the same for the same seed."""
    if num_records <= 0:
        raise ValueError("num_records must be positive")
    rng = random.Random(seed)
    records = []
    for index in range(num_records):
        question = QUESTIONS[rng.randrange(len(QUESTIONS))]
        context = _background(rng, draw_context_words(rng))
        prompt = f"{context} {question}" if context else question
        reply_words = draw_reply_words(rng)
        reply = " ".join(rng.choice(REPLY_WORDS) for _ in range(reply_words))
        records.append({"id": f"smol-chat-{index:03d}",
                        "messages": [{"role": "user", "content": prompt},
                                     {"role": "assistant", "content": reply}]})
    return records


def write_dataset(path: str | Path, num_records: int = DEFAULT_RECORDS,
                  seed: int = DEFAULT_SEED) -> Path:
    """Write the records as JSONL (one record per line, keys in a fixed order)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in make_records(num_records, seed)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
