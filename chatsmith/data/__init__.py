"""Data: what the stages read, from raw files to batches.

- `sources`: text documents from files, folders, JSONL, Parquet or `hf:NAME` (`stream_hf`).
- `chitchat`: the built-in corpus (`BUILTIN_NAME`); `conversations`: chat data for SFT.
- `splits`: the held-out rules; `batching`: the per-epoch shuffle and right-padding;
  `tokens`: token streams and windows for language modelling.
- `task_base`, `tasks`, `arithmetic`: checkable tasks (problems, rewards, worked examples).
"""
