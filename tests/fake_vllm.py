"""Fakes of vLLM at the exact interfaces TRL calls (vLLM cannot be installed here).

- `FakeLLM`: `vllm.LLM` as TRL's colocate mode uses it: `generate(prompts, sampling_params=..., use_tqdm=...)` returning
  `RequestOutput`/`CompletionOutput`/`Logprob`-shaped objects, `llm_engine...model.load_weights`, `reset_prefix_cache`,
  `sleep`/`wake_up`.
- `FakeVLLMClient`: TRL's real `VLLMClient` with only its HTTP boundary replaced: `_post` answers the OpenAI
  `/v1/completions` route as `vllm serve` does (`choices` with `prompt_token_ids`, `token_ids` and `logprobs`), and the
  NCCL weight update records what it receives.
- `fake_vllm_module()`: a stand-in `vllm` module with `SamplingParams` taking vLLM's keyword arguments.

Both engines continue a context with `ScriptedEngine`, which follows vLLM's semantics: stop at the first stop string
(the token that completes it is kept), stop after EOS (kept), or at `max_tokens`; one logprob per token. With a `seed`,
sample i of a request draws as vLLM seeds it (seed + i): the same context, seed and sample index always give the same
completion, so separate `n=1` requests with one seed all give the same one.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import torch
from trl.generation.vllm_client import VLLMClient


@dataclass
class SamplingParams:
    """The fields of `vllm.SamplingParams` that TRL and trl-search set; anything else is a TypeError, as in vLLM."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: object = None


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool = True


def fake_vllm_module():
    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams
    return module


def token_logprob(token: int, position: int) -> float:
    """The logprob the fake engine reports for a sampled token: distinct per token and position."""
    return -(((token * 31 + position * 7) % 97) + 1) / 100


class ScriptedEngine:
    """Continues contexts along scripted trajectories, keyed by a marker in the prompt (see `script_model_forward`).

    Rows of a prompt that have not generated yet take the trajectories in turn; later turns follow the trajectory whose
    first turn the context holds. A turn's text is followed by filler (to show that generation stops at the stop
    string) unless it ends in "<EOS>".
    """

    def __init__(self, tokenizer, scripts: dict[str, list[list[str]]], policy=None, turn_marker="</information>"):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.turn_marker = turn_marker  # text that each observation adds once: counts the turns already taken
        # With a policy (a copy of the trained model holding the synced weights), the logprobs are that model's, as a
        # real engine's would be; without one, `token_logprob`.
        self.policy = policy
        self.next_trajectory = {marker: 0 for marker in scripts}
        self.reported: dict[tuple[int, ...], list[float]] = {}  # generated ids -> the logprobs reported for them

    def _turn_text(self, context: list[int], seed: int | None = None, sample_index: int = 0) -> str:
        text = self.tokenizer.decode(context, skip_special_tokens=True)
        marker = next(marker for marker in self.scripts if marker in text)
        completion = text[text.index(marker) :]
        trajectories = self.scripts[marker]
        started = [t for t in trajectories if t and t[0].removesuffix("<EOS>") in completion]
        if started:
            trajectory = max(started, key=lambda t: len(t[0]))
        elif seed is not None:  # seeded: the draw depends on the seed and the sample's index in its request only
            trajectory = trajectories[(seed + sample_index) % len(trajectories)]
        else:
            trajectory = trajectories[self.next_trajectory[marker] % len(trajectories)]
            self.next_trajectory[marker] += 1
        turn = completion.count(self.turn_marker) if started else 0
        return trajectory[turn] if turn < len(trajectory) else "<EOS>"

    def continue_context(
        self,
        context: list[int],
        max_tokens: int,
        stop: list[str] | None,
        seed: int | None = None,
        sample_index: int = 0,
    ):
        """Returns (token_ids, logprobs, text, finish_reason) as vLLM would."""
        turn = self._turn_text(context, seed, sample_index)
        eos = self.tokenizer.eos_token_id
        if turn.endswith("<EOS>"):
            body = turn[: -len("<EOS>")]
            planned = (self.tokenizer(body, add_special_tokens=False)["input_ids"] if body else []) + [eos]
        else:
            planned = self.tokenizer(turn + " filler filler filler", add_special_tokens=False)["input_ids"] + [eos]
        token_ids, finish_reason = [], "length"
        for token in planned:
            if len(token_ids) == max_tokens:
                break
            token_ids.append(token)
            if token == eos:
                finish_reason = "stop"
                break
            if stop and any(s in self.tokenizer.decode(token_ids) for s in stop):
                finish_reason = "stop"
                break
        logprobs = self._logprobs(context, token_ids)
        self.reported[tuple(token_ids)] = logprobs
        return token_ids, logprobs, self.tokenizer.decode(token_ids, skip_special_tokens=True), finish_reason

    def _logprobs(self, context: list[int], token_ids: list[int]) -> list[float]:
        if self.policy is None or not token_ids:
            return [token_logprob(token, len(context) + i) for i, token in enumerate(token_ids)]
        with torch.no_grad():
            logits = self.policy(input_ids=torch.tensor([context + token_ids])).logits[0, len(context) - 1 : -1]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0].tolist()

    def load_weights(self, weights: dict) -> None:
        if self.policy is not None:
            self.policy.load_state_dict(weights, strict=False)


class FakeLLM:
    """`vllm.LLM` as TRL's colocate mode calls it."""

    def __init__(self, engine: ScriptedEngine):
        self.engine = engine
        self.calls: list[list[SamplingParams]] = []  # the sampling params of each generate call, one per prompt
        self.loaded_weights: list[dict] = []  # one {name: tensor} per weight sync
        self.prefix_cache_resets = 0
        self.sleeping = False
        model = types.SimpleNamespace(load_weights=self._load_weights)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(
                driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))
            ),
            model_config=types.SimpleNamespace(max_model_len=4096),
        )
        self._sync: dict = {}

    def _load_weights(self, weights):
        for name, tensor in weights:
            self._sync[name] = tensor.detach().clone()

    def reset_prefix_cache(self):
        # TRL resets the cache once after pushing all the weights: close the sync there.
        self.engine.load_weights(self._sync)
        self.loaded_weights.append(self._sync)
        self._sync = {}
        self.prefix_cache_resets += 1

    def sleep(self, level: int = 1):
        self.sleeping = True

    def wake_up(self, tags=None):
        self.sleeping = False

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        assert len(sampling_params) == len(prompts), "one SamplingParams per prompt, or one for all"
        assert all(isinstance(params, SamplingParams) for params in sampling_params)
        self.calls.append(sampling_params)
        outputs = []
        for number, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            context = list(prompt["prompt_token_ids"])
            completions = []
            for index in range(params.n):
                token_ids, logprobs, text, finish = self.engine.continue_context(
                    context, params.max_tokens, params.stop, params.seed, index
                )
                if params.stop and not params.include_stop_str_in_output:
                    raise AssertionError("trl-search must keep the stop string in the output")
                per_position = None
                if params.logprobs is not None:
                    per_position = [
                        {token: Logprob(logprob=lp, rank=1, decoded_token=self.engine.tokenizer.decode([token]))}
                        for token, lp in zip(token_ids, logprobs)
                    ]
                completions.append(
                    CompletionOutput(index, text, token_ids, sum(logprobs), per_position, finish_reason=finish)
                )
            outputs.append(RequestOutput(str(number), None, context, None, completions))
        return outputs


class FakeVLLMClient(VLLMClient):
    """TRL's `VLLMClient` talking to a fake `vllm serve`: only the HTTP and NCCL boundaries are replaced."""

    def __init__(self, engine: ScriptedEngine):  # the real one checks the server and opens a session
        self.engine = engine
        self.base_url = "http://fake-vllm:8000"
        self.host, self.server_port, self.group_port = "fake-vllm", 8000, 51216
        self.communicator = None
        self._updating_weights = False
        self.model = "fake-model"
        self.requests: list[dict] = []  # bodies of /v1/completions requests
        self.loaded_weights: list[dict] = []
        self.prefix_cache_resets = 0

    def init_communicator(self, device=0):
        pass

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def update_named_params(self, metadata, named_params):
        names = [name for name, _, _ in metadata]
        received = {name: tensor.detach().clone() for name, tensor in named_params}
        assert list(received) == names, "the tensors must be streamed in the announced order"
        self.engine.load_weights(received)
        self.loaded_weights.append(received)

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1

    def _post(self, url: str, **kwargs) -> dict:
        if url != f"{self.base_url}/v1/completions":
            raise AssertionError(f"unexpected request to {url}")
        body = kwargs["json"]
        assert body["return_token_ids"] and body["return_tokens_as_token_ids"]
        self.requests.append(body)
        choices = []
        for prompt in body["prompt"]:
            assert isinstance(prompt, list), "trl-search sends token ids"
            for index in range(body.get("n", 1)):
                token_ids, logprobs, text, finish = self.engine.continue_context(
                    prompt, body["max_tokens"], body.get("stop"), body.get("seed"), index
                )
                choice = {
                    "index": len(choices),
                    "text": text,
                    "finish_reason": finish,
                    "prompt_token_ids": list(prompt),
                    "token_ids": token_ids,
                    "logprobs": None,
                }
                if body.get("logprobs") is not None:
                    tokens = [f"token_id:{token}" for token in token_ids]
                    choice["logprobs"] = {
                        "tokens": tokens,
                        "token_logprobs": logprobs,
                        "top_logprobs": [{token: lp} for token, lp in zip(tokens, logprobs)],
                        "text_offset": list(range(len(tokens))),
                    }
                choices.append(choice)
        return {"id": "cmpl-fake", "object": "text_completion", "model": self.model, "choices": choices}


@dataclass
class FakeEngines:
    """What `install_fake_vllm` put in place, for assertions."""

    engine: ScriptedEngine
    llm: FakeLLM | None = None
    client: FakeVLLMClient | None = None
    instances: list = field(default_factory=list)


def install_fake_vllm(monkeypatch, tokenizer, scripts, mode: str, turn_marker="</information>") -> FakeEngines:
    """Makes TRL's `VLLMGeneration` build a fake engine (colocate) or a fake client (server) instead of a real one;
    everything else in TRL's vLLM path (weight sync, settings) stays real."""
    import sys

    from trl.generation.vllm_generation import VLLMGeneration

    fakes = FakeEngines(engine=ScriptedEngine(tokenizer, scripts, turn_marker=turn_marker))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())

    def _init_vllm(self):
        fakes.engine.policy = copy.deepcopy(self.model).eval()  # the engine's own copy, updated by the weight syncs
        if self.mode == "server":
            if self.accelerator.is_main_process:
                fakes.client = self.vllm_client = FakeVLLMClient(fakes.engine)
        else:
            if self.tensor_parallel_size > 1:  # the TP groups TRL builds: consecutive ranks
                world = self.accelerator.num_processes
                self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                    [list(range(i, i + self.tensor_parallel_size)) for i in range(0, world, self.tensor_parallel_size)]
                )
            fakes.llm = self.llm = FakeLLM(fakes.engine)
            self._llm_weights_sleeping = False
        fakes.instances.append(self)

    monkeypatch.setattr(VLLMGeneration, "_init_vllm", _init_vllm)
    return fakes
