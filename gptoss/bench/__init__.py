"""Benchmarks: what ``gptoss bench`` and ``gptoss bench-serve`` measure, each printed as one JSON document.

- :mod:`gptoss.bench.single`: prefill and decode in one process, against the bandwidth and compute floors
  (:mod:`gptoss.bench.floor`), with the check against the reference path (:mod:`gptoss.bench.reference`), LoRA
  costs (:mod:`gptoss.bench.lora`) and transformers on the same weights (:mod:`gptoss.bench.hf_compare`).
- :mod:`gptoss.bench.compare`: gptoss, llama.cpp and transformers side by side, each engine in its own process
  (:mod:`gptoss.bench.workers`).
- :mod:`gptoss.bench.tensor_parallel`: the same JSON as ``single``, through the tensor parallel engine.
- :mod:`gptoss.bench.agent`: time to first token of an agent loop, with and without prefix reuse.
- :mod:`gptoss.bench.serve`: a load generator for an OpenAI-compatible chat endpoint.
- :mod:`gptoss.bench.memory`: resident memory and memory bandwidth; :mod:`gptoss.bench.common`: timing and output.
"""
