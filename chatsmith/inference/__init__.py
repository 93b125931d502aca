"""Inference: everything that runs a trained model.

- `engine`: the Engine (static KV cache, continuous batching, batched sampling); its decode
  step with fixed shapes for CUDA graphs is `static_decode.StaticDecodeStep`.
- `loading`: a run folder's latest checkpoint as model, tokenizer and engine.
- `scoring`: loss and bits per byte over token batches (pretraining, SFT and `eval` use it).
- `tasks`: replies to a task's problems and pass@1 / pass@k (RL and `eval --task`).
- `chat`, `streaming`: multi-turn chat sessions and incremental detokenizing.
"""
