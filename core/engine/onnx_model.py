"""One forward pass of the converted chat model (core/model/onnx_export.py) on ONNX Runtime, over keys and values
that stay in place between calls.

The builder's decoder takes `input_ids` [rows, new], an `attention_mask` whose row sums say how long each row is
(ONNX Runtime's GroupQueryAttention takes each row's positions from it, so rows start at position 0 and end where
their mask does), and each layer's past keys and values [rows, kv_heads, columns, head_dim]. Binding one buffer as
both a layer's past input and its present output makes the op write each new column in place: a decoding step then
copies no cache at all. `KVCache` is such a set of buffers with a fixed capacity of columns.

    model = OnnxModel(folder, threads=2)
    cache = model.cache(rows=1, capacity=256)
    logits = model.run(np.array([prompt_ids]), cache, np.array([0]))   # [1, vocab]: the next token's logits
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.errors import ModelLoadError


def zeroed(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of zeros in pages fresh from the kernel, which are zero until written: laying out a cache
    then touches no memory (np.zeros may take recycled heap pages and write every byte of them, faulting each page
    back in after the heap was trimmed). The pages go back to the system when the array is freed."""
    size = int(np.prod(shape)) * 4
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), np.float32, count=size // 4).reshape(shape)


class KVCache:
    """Every layer's keys and values for `rows` sequences, `capacity` columns each, bound once to an IO binding.
    Row r's first lengths[r] columns hold its tokens (the caller keeps the lengths); the rest are free."""

    def __init__(self, model: OnnxModel, rows: int, capacity: int) -> None:
        shape = (rows, model.kv_heads, capacity, model.head_dim)
        self.capacity = capacity
        keys, values = zeroed((2, model.layers, *shape))
        self.keys, self.values = list(keys), list(values)
        self.binding = model.session.io_binding()
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            for array, past, present in ((k, *model.key_names[layer]), (v, *model.value_names[layer])):
                value = ort.OrtValue.ortvalue_from_numpy(array)  # no copy: ONNX Runtime writes into `array`
                self.binding.bind_ortvalue_input(past, value)
                self.binding.bind_ortvalue_output(present, value)

    def copy_rows(self, source: KVCache, rows: list[int], start: int, columns: int) -> None:
        """Copy the first `columns` columns of `source`'s rows `rows` into this cache's rows start, start + 1, …"""
        index = np.asarray(rows)
        for mine, theirs in ((self.keys, source.keys), (self.values, source.values)):
            for a, b in zip(mine, theirs, strict=True):
                a[start:start + len(rows), :, :columns] = b[index, :, :columns]


class OnnxModel:
    """The converted decoder in one InferenceSession (CPU), with the shapes its cache needs."""

    def __init__(self, folder: Path, threads: int) -> None:
        config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.folder = Path(folder)
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_dim = int(decoder["head_size"])
        self.vocab_size = int(config["vocab_size"])
        self.context_length = int(config["context_length"])
        names = decoder["inputs"] | decoder["outputs"]
        self.key_names = [(names["past_key_names"] % i, names["present_key_names"] % i) for i in range(self.layers)]
        self.value_names = [(names["past_value_names"] % i, names["present_value_names"] % i)
                            for i in range(self.layers)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        self.session = ort.InferenceSession(str(self.folder / decoder["filename"]), options,
                                            providers=["CPUExecutionProvider"])
        self._logits = np.empty(0, np.float32)  # scratch for the logits output, grown as needed
        self.ids_name, self.mask_name, self.logits_name = names["input_ids"], names["attention_mask"], names["logits"]
        logits = next(o for o in self.session.get_outputs() if o.name == self.logits_name)
        self.last_only = logits.shape[1] == 1  # built with the LM head on the last position only

    def cache(self, rows: int, capacity: int) -> KVCache:
        return KVCache(self, rows, min(capacity, self.context_length))

    def run(self, ids: np.ndarray, cache: KVCache, lengths: np.ndarray) -> np.ndarray:
        """Feed `ids` [rows, new] after each row's lengths[row] cached tokens; returns the logits [rows, vocab] of
        each row's last new token (a view of a scratch buffer: valid until the next run). Writes the new tokens'
        keys and values into `cache`. Several rows take one new token each (decoding); a prompt's chunk is one row
        (this ONNX Runtime refuses several rows of several tokens over a cache)."""
        rows, new = ids.shape
        total = lengths + new
        mask = (np.arange(int(total.max())) < total[:, None]).astype(np.int64)
        positions = 1 if self.last_only else new
        need = rows * positions * self.vocab_size
        if self._logits.size < need:
            self._logits = np.empty(need, np.float32)
        logits = self._logits[:need].reshape(rows, positions, self.vocab_size)
        binding = cache.binding
        binding.bind_cpu_input(self.ids_name, np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input(self.mask_name, mask)
        binding.bind_output(self.logits_name, "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits[:, -1]


def open_prebuilt(folder: Path, vocab_size: int, threads: int) -> tuple[OnnxModel, str]:
    """A model converted elsewhere by onnxruntime-genai's builder (Microsoft publishes Phi-3-mini so), checked
    against the loaded model's vocabulary, and its ready-line phrase."""
    folder = Path(folder).expanduser()
    if not (folder / "genai_config.json").is_file():
        raise ModelLoadError(f"--onnx-model {folder}: not a folder written by onnxruntime-genai's model builder "
                             "(no genai_config.json)")
    try:
        model = OnnxModel(folder, threads)
    except Exception as exc:  # a broken or foreign graph: say which file, not a traceback
        raise ModelLoadError(f"--onnx-model {folder}: ONNX Runtime cannot load it ({exc})") from exc
    if model.vocab_size != vocab_size:
        raise ModelLoadError(f"--onnx-model {folder}: its vocabulary has {model.vocab_size:,} rows and the loaded "
                             f"model's {vocab_size:,}: it was built from another model")
    return model, f"ONNX Runtime {ort.__version__}, the model in {folder}"


def load_onnx_model(weights_dir: Path, cache_dir: Path, threads: int, progress=None) -> tuple[OnnxModel, str]:
    """The chat model on ONNX Runtime for the checkpoint in `weights_dir` (converted on first use, then cached), and
    a phrase for the ready line saying what it is and what the conversion cost."""
    from core.model.onnx_export import PRECISION, onnx_checkpoint

    folder, seconds = onnx_checkpoint(weights_dir, cache_dir, progress)
    made = f"converted in {seconds:.1f} s" if seconds is not None else "conversion cached"
    return OnnxModel(folder, threads), f"ONNX Runtime {ort.__version__}, {PRECISION} weights ({made})"
