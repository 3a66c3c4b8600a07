"""blackbox-sdk: a drop-in for the `openai` client that adds caching, hard budgets, retries, a call
log for training, and local adaptation of black-box models (BBox-Adapter reranking, Black-Box Tuning).

Replacing `openai` by `blackbox_sdk` in an import line is the whole migration: every public name
of the openai package is re-exported here, with `OpenAI` and `AsyncOpenAI` swapped for ours.
"""

from __future__ import annotations

from typing import Any

import openai as _openai
import openai.resources as _oai
from openai import DEFAULT_MAX_RETRIES as _DEFAULT_MAX_RETRIES
from openai import DEFAULT_TIMEOUT as _DEFAULT_TIMEOUT
from openai._client import OpenAIWithRawResponse as _OpenAIWithRawResponse
from openai._client import OpenAIWithStreamedResponse as _OpenAIWithStreamedResponse
from openai.resources.responses.responses import Responses as _Responses

from . import _compat
from ._client import AsyncOpenAI, OpenAI, wrap
from ._exceptions import (
    AdapterError,
    BackendError,
    BlackBoxError,
    BudgetExceededError,
    CacheError,
    CallLogError,
    ConfigError,
    EmbeddingsNotSupportedError,
    InvalidRequestError,
    MissingDependencyError,
    PriceMissingError,
    RateLimitExceededError,
    RerankerError,
    ReservationNotHeldError,
    StoreUnavailableError,
    TuningError,
)
from ._info import BlackBoxInfo
from ._lazy import lazy_attributes
from ._logging import setup_logging as _setup_logging
from ._module_client import module_client as _shared_client
from ._options import BeamOptions
from ._retry import RetryPolicy
from .budget import Budget, BudgetReport, Reservation, TokenCount
from .cache import Cache, CacheStats
from .call_log import CallLog, CallRecord, Feedback
from .limits import RateLimits

AsyncClient = AsyncOpenAI
Client = OpenAI

_OWN = [
    "AdapterError",
    "AsyncClient",
    "AsyncOpenAI",
    "BackendError",
    "BeamOptions",
    "BlackBoxError",
    "BlackBoxInfo",
    "Budget",
    "BudgetExceededError",
    "BudgetReport",
    "Cache",
    "CacheError",
    "CacheStats",
    "CallLog",
    "CallLogError",
    "CallRecord",
    "Client",
    "ConfigError",
    "EmbeddingsNotSupportedError",
    "Feedback",
    "InvalidRequestError",
    "MissingDependencyError",
    "OpenAI",
    "PriceMissingError",
    "RateLimitExceededError",
    "RateLimits",
    "RerankerError",
    "Reservation",
    "ReservationNotHeldError",
    "RetryPolicy",
    "StoreUnavailableError",
    "TokenCount",
    "TuningError",
    "wrap",
]
_LAZY = {  # need torch / transformers / cma: imported on first use
    "Adapter": ".adapter",
    "SoftPrompt": ".tuning",
    "Tuner": ".tuning",
}
_OPENAI_NAMES = [name for name in _openai.__all__ if name not in _OWN and not name.startswith("__")]
for _name in _OPENAI_NAMES:
    globals()[_name] = getattr(_openai, _name)

_setup_logging()
_compat.install()

__version__ = "0.1.0"
__all__ = sorted({*_OWN, *_LAZY, *_OPENAI_NAMES})

# Module-level client settings, as in the openai package.
admin_api_key: str | None = None
api_key: str | None = None
organization: str | None = None
project: str | None = None
base_url: str | None = None
timeout: Any = _DEFAULT_TIMEOUT
max_retries: int = _DEFAULT_MAX_RETRIES
default_headers: dict[str, str] | None = None
default_query: dict[str, object] | None = None
http_client: Any = None  # an httpx2.Client
webhook_secret: str | None = None
_SETTINGS = frozenset(__annotations__)

# The module-level client's resources, served by `__getattr__`: declared (never bound) so that a type
# checker sees openai's classes, as `openai.chat` has them.
audio: _oai.Audio
batches: _oai.Batches
beta: _oai.Beta
chat: _oai.Chat
completions: _oai.Completions
embeddings: _oai.Embeddings
files: _oai.Files
fine_tuning: _oai.FineTuning
images: _oai.Images
models: _oai.Models
moderations: _oai.Moderations
responses: _Responses
uploads: _oai.Uploads
vector_stores: _oai.VectorStores
with_raw_response: _OpenAIWithRawResponse
with_streaming_response: _OpenAIWithStreamedResponse
_CLIENT_ATTRIBUTES = frozenset(__annotations__) - _SETTINGS


_lazy = lazy_attributes(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    """The torch-backed classes on first use, and the module-level client's resources."""
    if name in _CLIENT_ATTRIBUTES:
        return getattr(_shared_client(globals()), name)
    return _lazy(name)
