"""The model's vocabulary in its own input embedding space: per-token tables, what a typed query becomes, exact
top-k search (FAISS on the CPU or GPU, a matmul for batches), the views (neighbours, analogies, similarity, odd one
out, vectors, maps), and the evaluation on word-vector benchmarks (Google analogies, WordSim-353, SimLex-999, read from
gensim's test data) beside published figures. May import core.errors, core.checks, core.text.token_strings (how a
token reads on its own) and core.work (evaluations take turns and a fair share); no other part of core."""
