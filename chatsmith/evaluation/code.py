"""`eval --code`: how well a model knows held-out source files.

- bits per byte of the files read left to right;
- infill exact match: a run of whole lines is cut out of a held-out file (random spans, fixed
  seed) and the model, given the code before and after, must write it back exactly; its
  output ends at `<|end|>` or where it starts to write the text after the cut, as
  `chatsmith complete` ends it (`suffix_stops`);
- left-to-right exact match: the same spans and the same stop, the model given the code
  before only: what a model trained without FIM can do at that cursor, and so the figure to
  compare a FIM model's infill exact match with;
- in-line exact match: the same two figures for a few characters cut out inside one line
  (the cursor inside a call or an expression), ended the same way (where the model writes the
  rest of the line);
- infill edit similarity: the same generations scored by how close they are to the removed
  text (difflib's ratio, 0..1), the partial-credit figure code-completion benchmarks report
  beside exact match; a middle that runs on past the cursor (a model that never learned
  where a middle ends) scores low here even when it starts right;
- next-line exact match: given only the code before, the model must write the next line;
- middle bits per byte: how well the model predicts those removed lines given the code
  before and after (in the fill-in-the-middle format), and given the code before only.
  Exact match is all or nothing, and a small model trained for minutes rarely gets a whole
  line exactly right; this figure shows what the suffix is worth to it well before that.

Spans are cut at the line break before the removed lines, so the middle starts with a line
break and its indentation ("\\n    return x") and the suffix with the break that ended the last
removed line: each side then tokenizes as it does inside a file. A middle matches when it
equals the removed text after trailing whitespace is stripped from both. Greedy decoding.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import asdict, dataclass

import torch

from chatsmith.data.batching import pad_right
from chatsmith.data.code import PYTHON_STDLIB, CodeFile, code_files, is_code_source
from chatsmith.data.fim import CHARS_PER_CONTEXT_TOKEN, FimSplit
from chatsmith.errors import ChatsmithError
from chatsmith.evaluation.perplexity import score_documents
from chatsmith.inference.completion import completion_prompt, suffix_stops
from chatsmith.inference.engine import SamplingParams
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.scoring import score_batches
from chatsmith.inference.streaming import cut_at_stops
from chatsmith.models import IGNORE_INDEX
from chatsmith.runtime import autocast

SEED = 1234
MAX_LINE_CHARS = 100  # longer lines are skipped as spans
MULTI_LINES = (2, 4)  # a multi-line middle is 2 to 4 lines
SIDE_SHARE = 0.4  # prefix and suffix each get this share of a training piece's characters


@dataclass
class CodeScore:
    files: int
    loss: float
    bpb: float
    tokens: int
    bytes: int
    infill_single_line_em: float | None  # None when the tokenizer has no FIM markers
    infill_multi_line_em: float | None
    infill_single_line_es: float | None  # edit similarity, 0..1
    infill_multi_line_es: float | None
    infill_in_line_em: float | None
    left_to_right_single_line_em: float
    left_to_right_multi_line_em: float
    left_to_right_in_line_em: float
    next_line_em: float
    middle_bpb_with_suffix: float | None  # None when the tokenizer has no FIM markers
    middle_bpb_prefix_only: float
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_code(run: LoadedRun, data: str | None, include: str | None) -> list[CodeFile]:
    """The held-out files of what the run was trained on (or of builtin:python-stdlib); or
    every file of another `data` folder."""
    args = run.info.get("args", {})
    if data is None:
        if is_code_source(args.get("data"), args.get("include")):
            data, include = args["data"], include or args.get("include")
        else:
            data = PYTHON_STDLIB
    split = "val" if data in (PYTHON_STDLIB, args.get("data")) else "all"
    files = code_files(data, include, split)
    if not files:
        raise ChatsmithError(f"{data} has too few files to hold any out; give --data FOLDER")
    return files


def sample_spans(files: list[CodeFile], n: int, lines: int, max_chars: int, seed: int):
    """`n` spans of `lines` whole lines (a random count in that range if a tuple), each with
    at most `max_chars` characters of context on either side."""
    rng = random.Random(seed)
    out: list[FimSplit] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        text = rng.choice(files).text
        rows = text.split("\n")
        k = rng.randint(*lines) if isinstance(lines, tuple) else lines
        if len(rows) < k + 2:
            continue
        i = rng.randint(1, len(rows) - k - 1)  # a line before and after the span
        body = rows[i : i + k]
        if not all(r.strip() for r in body) or max(len(r) for r in body) > MAX_LINE_CHARS:
            continue
        prefix = "\n".join(rows[:i])
        suffix = "\n" + "\n".join(rows[i + k :])
        out.append(_trimmed(prefix, "\n" + "\n".join(body), suffix, max_chars))
    return out


def sample_in_line_spans(files: list[CodeFile], n: int, max_chars: int, seed: int):
    """`n` spans of characters inside one line, both cuts between the line's indentation and
    its end (the cursor inside a call or an expression), with the same context either side."""
    rng = random.Random(seed)
    out: list[FimSplit] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        rows = rng.choice(files).text.split("\n")
        if len(rows) < 3:
            continue
        i = rng.randint(1, len(rows) - 2)
        if len(rows[i].strip()) < 2 or len(rows[i]) > MAX_LINE_CHARS:
            continue
        row = rows[i]
        a = rng.randint(len(row) - len(row.lstrip()), len(row) - 1)
        b = rng.randint(a + 1, len(row))
        prefix = "\n".join(rows[:i]) + "\n" + row[:a]
        suffix = row[b:] + "\n" + "\n".join(rows[i + 1 :])
        out.append(_trimmed(prefix, row[a:b], suffix, max_chars))
    return out


def _trimmed(prefix: str, middle: str, suffix: str, max_chars: int) -> FimSplit:
    """At most about `max_chars` of context each side, cut at line breaks."""
    cut = prefix.find("\n", len(prefix) - max_chars)  # start the prefix at a line
    prefix = prefix[cut + 1 :] if len(prefix) > max_chars and cut >= 0 else prefix
    end = suffix.rfind("\n", 0, max_chars)
    suffix = suffix[:end] if len(suffix) > max_chars and end > 0 else suffix
    return FimSplit(prefix, middle, suffix)


def _room(run: LoadedRun, wanted: int) -> int:
    """New tokens to allow: `wanted`, or half the context for a short-context model."""
    return min(wanted, run.cfg.max_seq_len // 2)


def _generate(run: LoadedRun, prompts: list[list[int]], max_tokens: int) -> list[str]:
    engine = run.engine(max_batch=16)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return [run.tokenizer.decode(g.tokens) for g in engine.generate_many(prompts, params)]


def middle_bpb(run: LoadedRun, spans: list[FimSplit], with_suffix: bool) -> float:
    """Bits per byte of the middles given the prefix and, in the fill-in-the-middle format,
    the suffix; or given the prefix only. The same tokens are scored either way (not the
    `<|end|>` after an infilled middle), so the two figures compare."""
    tok, ctx = run.tokenizer, run.cfg.max_seq_len
    xs, ys = [], []
    for s in spans:
        target = tok.encode(s.middle)
        if len(target) > ctx // 2:
            continue
        suffix = s.suffix if with_suffix else None
        prompt = completion_prompt(tok, s.prefix, suffix, ctx + 1 - len(target))
        xs.append((prompt + target)[:-1])
        ys.append([IGNORE_INDEX] * (len(prompt) - 1) + target)
    batches = (
        (pad_right(xs[i : i + 8], 0), pad_right(ys[i : i + 8], IGNORE_INDEX))
        for i in range(0, len(xs), 8)
    )
    device = next(run.model.parameters()).device
    bpt = torch.tensor(tok.bytes_per_token, dtype=torch.long)
    return score_batches(run.model, batches, bpt, autocast=lambda: autocast(device)).bpb


def edit_similarity(a: str, b: str) -> float:
    """1.0 for equal texts, near 0 for unrelated ones (trailing whitespace ignored)."""
    return difflib.SequenceMatcher(None, a.rstrip(), b.rstrip(), autojunk=False).ratio()


def completions(
    run: LoadedRun, spans: list[FimSplit], max_tokens: int, read_suffix: bool = True
) -> list[str]:
    """Greedy infills of `spans` (with `read_suffix` off, left-to-right completions of their
    prefixes), as the model wrote them."""
    budget = run.cfg.max_seq_len - max_tokens
    prompts = [
        completion_prompt(run.tokenizer, s.prefix, s.suffix if read_suffix else None, budget)
        for s in spans
    ]
    return _generate(run, prompts, max_tokens)


def infill_scores(outs: list[str], spans: list[FimSplit]) -> tuple[float, float]:
    """Exact match and mean edit similarity of `completions`, each ended at `suffix_stops`."""
    outs = [cut_at_stops(o, suffix_stops(s.suffix)) for o, s in zip(outs, spans)]
    exact = sum(o.rstrip() == s.middle.rstrip() for o, s in zip(outs, spans))
    similar = sum(edit_similarity(o, s.middle) for o, s in zip(outs, spans))
    return exact / len(spans), similar / len(spans)


def next_line_exact_match(outs: list[str], spans: list[FimSplit]) -> float:
    """Left-to-right `completions` of one-line spans: the first line they start must be the
    removed one."""
    hits = 0
    for o, s in zip(outs, spans):
        line = o.split("\n")[1] if o.startswith("\n") and "\n" in o else None
        hits += line is not None and line.rstrip() == s.middle[1:].rstrip()
    return hits / len(spans)


def evaluate_code(
    run: LoadedRun,
    data: str | None = None,
    include: str | None = None,
    samples: int = 100,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> CodeScore:
    files = held_out_code(run, data, include)
    tok = run.tokenizer
    score = score_documents(run, (f.text for f in files), batch_size, max_tokens)
    side = int(SIDE_SHARE * CHARS_PER_CONTEXT_TOKEN * run.cfg.max_seq_len)
    single = sample_spans(files, samples, 1, side, SEED)
    multi = sample_spans(files, samples, MULTI_LINES, side, SEED + 1)
    if not single or not multi:
        raise ChatsmithError("the held-out files have too few lines to cut spans from")
    in_line = sample_in_line_spans(files, samples, side, SEED + 2)
    single_em = multi_em = single_es = multi_es = in_line_em = with_suffix = None
    rooms = {"single": _room(run, 48), "multi": _room(run, 128), "in_line": _room(run, 32)}
    if tok.has_fim:
        single_em, single_es = infill_scores(completions(run, single, rooms["single"]), single)
        multi_em, multi_es = infill_scores(completions(run, multi, rooms["multi"]), multi)
        in_line_em, _ = infill_scores(completions(run, in_line, rooms["in_line"]), in_line)
        with_suffix = middle_bpb(run, single + multi, with_suffix=True)
    # one set of left-to-right completions of the single lines serves both of their figures
    next_lines = completions(run, single, rooms["single"], read_suffix=False)
    ltr_single, _ = infill_scores(next_lines, single)
    ltr_multi, _ = infill_scores(completions(run, multi, rooms["multi"], read_suffix=False), multi)
    ltr_in_line, _ = infill_scores(
        completions(run, in_line, rooms["in_line"], read_suffix=False), in_line
    )
    return CodeScore(
        files=len(files),
        loss=score.loss,
        bpb=score.bpb,
        tokens=score.tokens,
        bytes=score.bytes,
        infill_single_line_em=single_em,
        infill_multi_line_em=multi_em,
        infill_single_line_es=single_es,
        infill_multi_line_es=multi_es,
        infill_in_line_em=in_line_em,
        left_to_right_single_line_em=ltr_single,
        left_to_right_multi_line_em=ltr_multi,
        left_to_right_in_line_em=ltr_in_line,
        next_line_em=next_line_exact_match(next_lines, single),
        middle_bpb_with_suffix=with_suffix,
        middle_bpb_prefix_only=middle_bpb(run, single + multi, with_suffix=False),
        samples=len(single),
    )
