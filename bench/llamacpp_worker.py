"""llama.cpp in-process (llama-cpp-python) as a timed greedy generator, started by bench/llamacpp.py for the
benchmark and the llama.cpp test. It runs under llama.cpp's own Python (`.venv-llamacpp`, or
TOKEN_LAB_LLAMACPP_PYTHON), never the app's: that environment is optional, and llama.cpp's OpenMP threads and torch's
should not share a process. So it imports nothing from Token Lab.

    PYTHON bench/llamacpp_worker.py GGUF THREADS [--logits-all]     # then one JSON request per line on stdin:
    {"ids": [...], "tokens": 128}  ->  {"ids": [...], "ttft_s": ..., "total_s": ...}
    {"score": [...], "answer": [...], "path": "x.npy"}  ->  {"rows": n}   (with --logits-all)

A score request reads the prompt in one pass and the answer a token at a time, as llama.cpp computes them while
generating, and saves the logits [answer tokens, vocab] that predicted each answer token to `path` (numpy's format).

Greedy means argmax with nothing in front of it: no repetition penalty (llama-cpp-python's `generate` defaults to
none, its server to 1.1). Each request keeps the previous one's matching prompt prefix, llama.cpp's default.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    gguf, threads, logits_all = sys.argv[1], int(sys.argv[2]), "--logits-all" in sys.argv[3:]
    llm = Llama(model_path=gguf, n_ctx=4096, n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                verbose=False)
    eos = llm.token_eos()
    print(json.dumps({"ready": True, "eos": eos}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "score" in request:
            prompt, answer = request["score"], request["answer"]
            llm.reset()
            llm.eval(prompt)
            for token in answer[:-1]:
                llm.eval([token])
            np.save(request["path"], np.asarray(llm.scores[len(prompt) - 1:len(prompt) - 1 + len(answer)],
                                                dtype=np.float32))
            print(json.dumps({"rows": len(answer)}), flush=True)
            continue
        out: list[int] = []
        start = time.perf_counter()
        first = last = start
        for token in llm.generate(request["ids"], temp=0.0, repeat_penalty=1.0):
            last = time.perf_counter()
            if not out:
                first = last
            if token == eos:
                break
            out.append(int(token))
            if len(out) >= request["tokens"]:
                break
        print(json.dumps({"ids": out, "ttft_s": first - start, "total_s": last - start}), flush=True)


if __name__ == "__main__":
    main()
