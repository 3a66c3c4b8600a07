"""Black-Box Tuning: CMA-ES over a low-dimensional z, the soft prompt `A z + p0` it projects to,
the scorers that read verbalizer logits (local model or an HTTP embeds endpoint), the meter that
puts every evaluation on an SDK client's budget and call log, and a vLLM server to tune over.
Names that need torch, numpy or cma, and the meter (which reads the client's options), load on
first use.
"""

from .._embeds import decode_embeds, encode_embeds
from .._lazy import lazy_attributes
from ._config import BBTConfig
from ._examples import sample_few_shot
from ._template import EncodedExamples, Placement, PromptTemplate

__all__ = [
    "BBTConfig",
    "ClientMeter",
    "DevRecord",
    "EmbedsEndpoint",
    "EncodedExamples",
    "EvaluationKind",
    "GenerationRecord",
    "LocalScorer",
    "Placement",
    "PromptScorer",
    "PromptTemplate",
    "SoftPrompt",
    "SoftPromptInfo",
    "Tuner",
    "VLLMServer",
    "build_projection",
    "decode_embeds",
    "encode_embeds",
    "export_hf_folder",
    "population_losses",
    "resolve_target",
    "sample_few_shot",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "ClientMeter": "._meter",
        "DevRecord": "._state",
        "EmbedsEndpoint": "._embeds_endpoint",
        "EvaluationKind": "._meter",
        "GenerationRecord": "._state",
        "LocalScorer": "._local_scorer",
        "PromptScorer": "._scorer",
        "SoftPrompt": "._soft_prompt",
        "SoftPromptInfo": "._soft_prompt",
        "Tuner": "._tuner",
        "VLLMServer": "._vllm",
        "build_projection": "._projection",
        "export_hf_folder": "._vllm",
        "population_losses": "._losses",
        "resolve_target": "._scorer",
    },
)
