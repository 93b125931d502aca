"""Hugging Face interop: import open models into run folders and export runs to HF layout.

Import and export need only safetensors, json and the tokenizers library; `transformers` is
needed only by whoever loads an export (and by the tests that compare logits with it).
"""
