"""Token shards: a corpus tokenized once into fixed-size binary files, read back memory-mapped.

A shard folder looks like this:

    SHARDS/index.json          dtype, token counts, tokenizer fingerprint, held-out shard
    SHARDS/tokenizer.json      the tokenizer the tokens belong to
    SHARDS/train_000000.bin    `shard_tokens` tokens each (the last one may be shorter)
    SHARDS/val.bin             the held-out documents (`val_share` of them, spread evenly)

Every document is led by the begin token, exactly as `tokenize_documents` lays them out, so a
corpus trains the same from shards as from text. Shards and the index are written atomically;
after each shard the index records where the document stream stands, so an interrupted run
resumes at the last complete shard. Tokenizing runs in worker processes over batches of
documents with a bounded window of batches in flight, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatsmith.errors import ChatsmithError
from chatsmith.files import write_atomic, write_json_atomic
from chatsmith.tokenizer import TOKENIZER_FILE, Tokenizer

INDEX_FILE = "index.json"
VAL_FILE = "val.bin"
FORMAT = 1
UINT16_LIMIT = 1 << 16
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: few files, each quick to map
DOC_BATCH = 256  # documents per worker task
_tok: Tokenizer | None = None  # each worker process's own tokenizer


def fingerprint(tokenizer_file: Path) -> str:
    return hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()


def token_dtype(vocab_size: int, name: str | None = None) -> np.dtype:
    """uint16 while every id fits, else uint32; uint16 for a larger vocab is an error."""
    if name is None:
        name = "uint16" if vocab_size <= UINT16_LIMIT else "uint32"
    if name not in ("uint16", "uint32"):
        raise ChatsmithError(f"token dtype must be uint16 or uint32, got {name!r}")
    if name == "uint16" and vocab_size > UINT16_LIMIT:
        raise ChatsmithError(
            f"a vocabulary of {vocab_size:,} tokens does not fit uint16 "
            f"(at most {UINT16_LIMIT:,}); use uint32 shards"
        )
    return np.dtype(name)


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


def _is_val(doc: int, share: float) -> bool:
    """Documents whose index crosses a multiple of 1/share are held out: evenly spread, exact."""
    return int((doc + 1) * share) > int(doc * share)


def _init_worker(tokenizer_file: str) -> None:
    global _tok
    _tok = Tokenizer.load(tokenizer_file)


def _init_pool_worker(tokenizer_file: str) -> None:
    # the processes are the parallelism: no Rust thread pool in each (nor its fork warning)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _init_worker(tokenizer_file)


def _encode(task: tuple[int, list[str], float, str]):
    """(first doc index, docs, val share, dtype) -> train tokens, their doc ids and lengths,
    held-out tokens, their doc ids and lengths."""
    first, docs, share, dtype = task
    assert _tok is not None
    out = {True: ([], [], []), False: ([], [], [])}
    start = _tok.doc_start  # the begin token, where the tokenizer has one
    for j, ids in enumerate(_tok.encode_batch(docs)):
        arrays, doc_ids, lengths = out[_is_val(first + j, share)]
        arrays.append(np.array([*start, *ids], dtype=dtype))
        doc_ids.append(first + j)
        lengths.append(len(start) + len(ids))

    def pack(part):
        arrays, doc_ids, lengths = part
        flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
        return flat, np.array(doc_ids, dtype=np.int64), np.array(lengths, dtype=np.int64)

    return (*pack(out[False]), *pack(out[True]), sum(len(d.encode()) for d in docs))


def _batches(docs: Iterator[str], skip: int, share: float, dtype: str):
    batch, first = [], skip
    for i, doc in enumerate(docs):
        if i < skip:
            continue
        batch.append(doc)
        if len(batch) == DOC_BATCH:
            yield first, batch, share, dtype
            first, batch = first + len(batch), []
    if batch:
        yield first, batch, share, dtype


def _ordered_map(fn, tasks: Iterable, workers: int, tokenizer_file: str) -> Iterator:
    """fn over tasks in order, in `workers` processes, with a bounded number in flight.

    (Pool.imap would read the whole task iterator ahead in a feeder thread: memory would grow
    with the corpus.)"""
    if workers <= 1:
        _init_worker(tokenizer_file)
        yield from map(fn, tasks)
        return
    with mp.get_context().Pool(workers, _init_pool_worker, (tokenizer_file,)) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@dataclass
class Progress:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0


class _Writer:
    """The shard being filled, the held-out file, and the index that records both."""

    def __init__(self, out: Path, index: dict):
        self.out, self.index = out, index
        self.dtype = np.dtype(index["dtype"])
        self.buf = np.empty(index["shard_tokens"], dtype=self.dtype)  # the one shard in memory
        self.fill = 0
        resume = index["resume"]
        self.val_tokens = resume["val_tokens"]
        self.skip_tokens = resume["skip"]  # of document resume["doc"], already in a shard
        partial = out / (VAL_FILE + ".partial")
        with open(partial, "ab") as f:
            f.truncate(self.val_tokens * self.dtype.itemsize)
        self.val = open(partial, "ab")

    def add(self, train, train_ids, train_lens, val, val_ids, val_lens) -> None:
        if self.skip_tokens:  # a resumed run: drop the part of its first document already shard
            train = train[self.skip_tokens :]
            train_lens = train_lens.copy()
            train_lens[0] -= self.skip_tokens
            self.skip_tokens = 0
        val_before = self.val_tokens
        self.val.write(val.tobytes())
        self.val.flush()
        self.val_tokens += len(val)
        ends = np.cumsum(train_lens)
        pos = 0
        while pos < len(train):
            take = min(len(self.buf) - self.fill, len(train) - pos)
            self.buf[self.fill : self.fill + take] = train[pos : pos + take]
            self.fill, pos = self.fill + take, pos + take
            if self.fill == len(self.buf):
                j = int(np.searchsorted(ends, pos, side="right"))  # document holding token `pos`
                if j < len(train_ids):
                    doc, skip = int(train_ids[j]), pos - int(ends[j] - train_lens[j])
                else:  # the shard ended with a document: resume after this batch
                    doc = int(max(train_ids.max(initial=-1), val_ids.max(initial=-1))) + 1
                    skip = 0
                val_at = val_before + int(val_lens[val_ids < doc].sum())
                self.flush_shard({"doc": doc, "skip": skip, "val_tokens": val_at})

    def flush_shard(self, resume: dict | None) -> None:
        n = len(self.index["train"])
        name = f"train_{n:06d}.bin"
        write_atomic(self.out / name, self.buf[: self.fill].tofile)
        self.index["train"].append({"file": name, "tokens": self.fill})
        if resume is not None:
            self.index["resume"] = resume
        write_json_atomic(self.out / INDEX_FILE, self.index)
        self.fill = 0

    def finish(self, documents: int) -> None:
        if self.fill:
            self.flush_shard(None)
        self.val.close()
        os.replace(self.out / (VAL_FILE + ".partial"), self.out / VAL_FILE)
        self.index.pop("resume")
        self.index.update(
            val={"file": VAL_FILE, "tokens": self.val_tokens}, documents=documents, complete=True
        )
        write_json_atomic(self.out / INDEX_FILE, self.index)


def _start_index(out: Path, tokenizer_file: Path, shard_tokens: int, val_share: float) -> dict:
    """A fresh index, or the one an interrupted run left (checked to be the same job)."""
    tok = Tokenizer.load(tokenizer_file)
    fresh = {
        "format": FORMAT,
        "dtype": token_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": fingerprint(tokenizer_file),
        "shard_tokens": shard_tokens,
        "val_share": val_share,
        "train": [],
        "complete": False,
        "resume": {"doc": 0, "skip": 0, "val_tokens": 0},
    }
    path = out / INDEX_FILE
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ChatsmithError(f"{out} is not empty and holds no shards; choose a new --out")
        write_atomic(out / TOKENIZER_FILE, lambda tmp: shutil.copyfile(tokenizer_file, tmp))
        write_json_atomic(path, fresh)
        return fresh
    index = read_index(out)
    if index.get("complete"):
        raise ChatsmithError(f"{out} already holds finished shards; choose a new --out")
    same = ("tokenizer_sha256", "shard_tokens", "val_share")
    if any(index.get(k) != fresh[k] for k in same):
        raise ChatsmithError(
            f"{out} holds an interrupted job with another tokenizer, --shard-tokens or "
            "--val-share; resume it with the same ones or choose a new --out"
        )
    listed = {s["file"] for s in index["train"]}
    for stray in out.glob("train_*.bin*"):  # a shard being written when the job stopped
        if stray.name not in listed:
            stray.unlink()
    return index


def write_shards(
    docs: Iterable[str],
    tokenizer_file: Path,
    out: Path,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_share: float = 0.005,
    workers: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict:
    """Tokenize `docs` into shards under `out`, resuming an interrupted job there; the index."""
    if shard_tokens < 1:
        raise ChatsmithError(f"--shard-tokens must be positive, got {shard_tokens}")
    if not 0 <= val_share < 1:
        raise ChatsmithError(f"--val-share must be in [0, 1), got {val_share}")
    out, tokenizer_file = Path(out), Path(tokenizer_file)
    index = _start_index(out, tokenizer_file, shard_tokens, val_share)
    writer = _Writer(out, index)
    start_doc = index["resume"]["doc"]
    progress = Progress(documents=start_doc)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    tasks = _batches(iter(docs), start_doc, val_share, index["dtype"])
    for train, t_ids, t_lens, val, v_ids, v_lens, n_bytes in _ordered_map(
        _encode, tasks, workers, str(tokenizer_file)
    ):
        writer.add(train, t_ids, t_lens, val, v_ids, v_lens)
        progress.documents += len(t_ids) + len(v_ids)
        progress.bytes += n_bytes
        progress.tokens += len(train) + len(val)
        if on_progress is not None:
            on_progress(progress)
    if progress.documents == 0:
        raise ChatsmithError("no documents to tokenize")
    writer.finish(progress.documents)
    return index


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except OSError:
        raise ChatsmithError(f"{folder} holds no token shards (no {INDEX_FILE})") from None
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{path} is corrupt ({e})") from None
    if index.get("format") != FORMAT:
        raise ChatsmithError(f"{path} has format {index.get('format')!r}; expected {FORMAT}")
    return index


@dataclass
class TokenShards:
    """A finished, checked shard folder; arrays are memory-mapped, not read."""

    folder: Path
    index: dict

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.folder / TOKENIZER_FILE)

    def _map(self, entry: dict) -> np.ndarray:
        if entry["tokens"] == 0:
            return np.empty(0, dtype=self.index["dtype"])
        return np.memmap(self.folder / entry["file"], dtype=self.index["dtype"], mode="r")

    def train(self) -> list[np.ndarray]:
        return [self._map(e) for e in self.index["train"]]

    def val(self) -> np.ndarray:
        return self._map(self.index["val"])

    @property
    def train_tokens(self) -> int:
        return sum(e["tokens"] for e in self.index["train"])


def open_shards(folder: str | Path, tokenizer_sha256: str | None = None) -> TokenShards:
    """Check a shard folder before training on it: finished, consistent, no file cut short.

    `tokenizer_sha256`, if given, is the fingerprint of the tokenizer the shards must match
    (a resumed run's own tokenizer)."""
    folder = Path(folder)
    index = read_index(folder)
    if not index.get("complete"):
        raise ChatsmithError(
            f"tokenizing into {folder} did not finish; run the same chatsmith tokenize command "
            "again to resume it"
        )
    tok_file = folder / TOKENIZER_FILE
    if not tok_file.is_file():
        raise ChatsmithError(f"{folder} lacks its {TOKENIZER_FILE}")
    actual = fingerprint(tok_file)
    if actual != index["tokenizer_sha256"]:
        raise ChatsmithError(
            f"{folder}/{INDEX_FILE} does not match {TOKENIZER_FILE} (fingerprint "
            f"{index['tokenizer_sha256'][:12]} vs {actual[:12]}): the tokens were made by "
            "another tokenizer"
        )
    if tokenizer_sha256 is not None and tokenizer_sha256 != actual:
        raise ChatsmithError(
            f"the shards in {folder} were made with another tokenizer than this run's "
            f"(fingerprint {actual[:12]} vs {tokenizer_sha256[:12]})"
        )
    token_dtype(int(index["vocab_size"]), index["dtype"])
    itemsize = np.dtype(index["dtype"]).itemsize
    for entry in [*index["train"], index["val"]]:
        path = folder / entry["file"]
        want = entry["tokens"] * itemsize
        have = path.stat().st_size if path.is_file() else 0
        if have != want:
            raise ChatsmithError(
                f"shard {path} is truncated or damaged: {have:,} bytes on disk, the index says "
                f"{entry['tokens']:,} tokens ({want:,} bytes); tokenize into a new folder"
            )
    return TokenShards(folder, index)


def resolve_tokenizer(
    spec: str, data: Iterable[str], out: Path, vocab_size: int, train_mb: float
) -> Path:
    """The tokenizer.json to tokenize with: a run folder's, a file, or `new` (trained on the
    first `train_mb` MB of `data`; a resumed job keeps the one it trained)."""
    if spec != "new":
        path = Path(spec)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        Tokenizer.load(path)  # a clear error if it is missing or unreadable
        return path
    if is_shard_folder(out):
        return Path(out) / TOKENIZER_FILE
    sample, size = [], 0
    for doc in data:
        sample.append(doc)
        size += len(doc)
        if size >= train_mb * 1e6:
            break
    staging = Path(out).with_name(Path(out).name + ".tokenizer")
    staging.mkdir(parents=True, exist_ok=True)
    return Tokenizer.train(sample, vocab_size).save(staging)
