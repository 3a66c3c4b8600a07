"""Hard cost budgets: caps and their policy, the shared ledger (SQLite or Redis), model prices and token counting."""

from ._budget import Budget
from ._calibration import UNCALIBRATED_ALLOWANCE, Calibration
from ._caps import NANO_PER_USD, Cap, CapUsage, Scope, nano_to_usd, usd_to_nano
from ._ledger import Ledger, LedgerTransaction
from ._owed import owed_usd, settle_owed
from ._policy import Reservation
from ._prices import (
    DEFAULT_PRICES_FILE,
    PRIORITY_TIERS,
    ModelPrice,
    PriceTable,
    default_prices,
    load_price_file,
    snapshot_base,
)
from ._redis_ledger import RedisLedger
from ._report import BudgetReport, CapStatus
from ._store import (
    NO_LOG,
    CapTransaction,
    Hold,
    LedgerSnapshot,
    LedgerStore,
    SettledSpend,
)
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
    load_encoding,
)

__all__ = [
    "Budget",
    "BudgetReport",
    "Calibration",
    "Cap",
    "CapStatus",
    "CapTransaction",
    "CapUsage",
    "DEFAULT_PRICES_FILE",
    "Hold",
    "Ledger",
    "LedgerSnapshot",
    "LedgerStore",
    "LedgerTransaction",
    "ModelPrice",
    "NANO_PER_USD",
    "NO_LOG",
    "PRIORITY_TIERS",
    "PriceTable",
    "RedisLedger",
    "Reservation",
    "Scope",
    "SettledSpend",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_TO_PRIME_REPLY",
    "TokenCount",
    "Tokenizer",
    "UNCALIBRATED_ALLOWANCE",
    "count_chat_tokens",
    "count_input_tokens",
    "count_tokens",
    "default_prices",
    "encoding_name_for_model",
    "load_encoding",
    "load_price_file",
    "nano_to_usd",
    "owed_usd",
    "settle_owed",
    "snapshot_base",
    "usd_to_nano",
]
