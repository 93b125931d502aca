"""Evaluation commands' own code: held-out loss and bits per byte of a run on any text
(`perplexity`). pass@k on tasks lives in `chatsmith.inference.tasks`, because RL uses it too."""
