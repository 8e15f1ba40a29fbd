"""Stock quotes from a configurable HTTP quote API, with deterministic demo data when unconfigured.

The API is described by settings, not code: a URL template with `{ticker}`, an optional key header,
and dotted paths to the price and currency fields in the JSON answer.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.http import request_json
from shared.tools import ToolError

DEMO_LABEL = "demo data: set QUOTE_API_URL for live quotes"


class QuoteSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUOTE_API_", env_file=".env", extra="ignore")

    url: str | None = Field(
        default=None,
        description="URL template containing {ticker}, e.g. https://quotes.example/v1/{ticker}",
    )
    key: SecretStr | None = None
    key_header: str = "X-API-Key"
    price_field: str = "price"
    currency_field: str = "currency"
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class StockQuote(BaseModel):
    ticker: str
    price: str
    currency: str
    source: Literal["quote_api", "demo"]
    note: str = ""


async def fetch_quote(ticker: str, settings: QuoteSettings) -> StockQuote:
    if not settings.url:
        return demo_quote(ticker)
    if "{ticker}" not in settings.url:
        raise ToolError("QUOTE_API_URL must contain {ticker}")
    headers = {"Accept": "application/json"}
    if settings.key is not None:
        headers[settings.key_header] = settings.key.get_secret_value()
    async with httpx.AsyncClient(timeout=settings.timeout_seconds, headers=headers) as client:
        body = await request_json(
            client, "GET", settings.url.replace("{ticker}", ticker), upstream="the quote API"
        )
    raw_price = _dig(body, settings.price_field)
    try:
        price = Decimal(str(raw_price))
    except (InvalidOperation, ValueError):
        price = None
    if price is None or not price.is_finite():
        raise ToolError(
            f"the quote API answer has no numeric '{settings.price_field}' for {ticker}"
        )
    currency = _dig(body, settings.currency_field)
    return StockQuote(
        ticker=ticker,
        price=str(price),
        currency=str(currency) if currency else "USD",
        source="quote_api",
    )


def _dig(body: Any, dotted: str) -> Any:
    current = body
    for part in dotted.split("."):
        if isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, dict):
            current = current.get(part)
        else:
            return None
    return current


def demo_quote(ticker: str) -> StockQuote:
    seed = int.from_bytes(hashlib.sha256(ticker.encode()).digest()[:8], "big")
    cents = 1_000 + seed % 99_000
    return StockQuote(
        ticker=ticker,
        price=str(Decimal(cents) / 100),
        currency="USD",
        source="demo",
        note=DEMO_LABEL,
    )
