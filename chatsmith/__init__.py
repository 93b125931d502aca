"""chatsmith: build your own ChatGPT-style model from scratch.

Where things live (imports point down this list, never up):

- `cli` (with `cli_stages`, the shared shape of the training commands) and `quickstart`
  (the whole pipeline in one command): parse, call, report.
- `serving/`: the OpenAI-compatible server and chat page.
- `training/`: typed stage configs (`training.config`), the one loop (`training.loop`),
  the stages (pretrain, sft, rl) and the other objectives (masked_lm, seq2seq).
- `evaluation/`: bits per byte of a run on any text.
- `inference/`: the engine (KV cache, continuous batching, sampling), scoring, chat sessions,
  task sampling and pass@k, loading a run.
- `models/`, `tokenizer`, `chat_template`, `data/`: the model modules, the BPE tokenizer, the
  one chat template, and data sources, splits and batching.
- `checkpoint`, `runtime`, `reporting`, `errors`: run folders, device and RNG, the progress
  and message reporter, the one error type.
"""

__version__ = "0.1.0"
