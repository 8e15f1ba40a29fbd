"""The Finance team's tools. Adding a tool here and redeploying this worker publishes it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, localcontext
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from finance_service.quotes import QuoteSettings, StockQuote, fetch_quote
from shared.config import integration_settings
from shared.tools import ToolRegistry

registry = ToolRegistry(service="finance")
tool = registry.tool


def _normalise_ticker(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


Ticker = Annotated[
    str,
    BeforeValidator(_normalise_ticker),
    Field(
        pattern=r"^[A-Z]{1,5}([.-][A-Z]{1,2})?$",
        description="Stock ticker symbol, e.g. AAPL or BRK.B.",
    ),
]


class RoiResult(BaseModel):
    principal: str
    rate_percent: str
    years: int
    final_value: str
    profit: str
    roi_percent: str


@tool(timeout=timedelta(seconds=30))
async def stock_price(ticker: Ticker) -> StockQuote:
    """Latest price for a stock ticker."""
    return await fetch_quote(ticker, integration_settings(QuoteSettings))


@tool(timeout=timedelta(seconds=5))
async def calculate_roi(
    principal: Annotated[
        Decimal,
        Field(gt=0, le=Decimal("1e12"), decimal_places=2, description="Amount invested."),
    ],
    rate: Annotated[
        Decimal,
        Field(
            gt=-100,
            le=100,
            decimal_places=4,
            description="Annual return in percent, e.g. 7.5 for 7.5% a year.",
        ),
    ],
    years: Annotated[int, Field(ge=1, le=100, description="Whole years, compounded yearly.")],
) -> RoiResult:
    """Compound growth of an investment with exact decimal arithmetic (no float rounding)."""
    # The bounds above keep every result under 10^43, so 80 digits is exact to the cent.
    with localcontext() as ctx:
        ctx.prec = 80
        final_value = principal * (1 + rate / 100) ** years
        cent = Decimal("0.01")
        final_rounded = final_value.quantize(cent)
        profit = (final_value - principal).quantize(cent)
        roi_percent = ((final_value - principal) / principal * 100).quantize(cent)
    return RoiResult(
        principal=str(principal),
        rate_percent=str(rate),
        years=years,
        final_value=str(final_rounded),
        profit=str(profit),
        roi_percent=str(roi_percent),
    )
