"""Hard cost budgets: caps and their policy, the shared ledger, model prices and token counting."""

from ._budget import Budget
from ._ledger import (
    NANO_PER_USD,
    Cap,
    CapUsage,
    Ledger,
    LedgerTransaction,
    Scope,
    nano_to_usd,
    usd_to_nano,
)
from ._policy import Reservation
from ._prices import (
    DEFAULT_PRICES_FILE,
    ModelPrice,
    PriceTable,
    default_prices,
    load_price_file,
    snapshot_base,
)
from ._report import BudgetReport, CapStatus
from ._store import CapTransaction, LedgerStore
from ._tokens import (
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_TO_PRIME_REPLY,
    TokenCount,
    Tokenizer,
    count_chat_tokens,
    count_input_tokens,
    count_tokens,
    encoding_name_for_model,
)

__all__ = [
    "Budget",
    "BudgetReport",
    "Cap",
    "CapStatus",
    "CapTransaction",
    "CapUsage",
    "DEFAULT_PRICES_FILE",
    "Ledger",
    "LedgerStore",
    "LedgerTransaction",
    "ModelPrice",
    "NANO_PER_USD",
    "PriceTable",
    "Reservation",
    "Scope",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_TO_PRIME_REPLY",
    "TokenCount",
    "Tokenizer",
    "count_chat_tokens",
    "count_input_tokens",
    "count_tokens",
    "default_prices",
    "encoding_name_for_model",
    "load_price_file",
    "nano_to_usd",
    "snapshot_base",
    "usd_to_nano",
]
