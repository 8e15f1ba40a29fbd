"""The orchestrator's local tools, published through the same SDK the teams use.

They run as activities in the orchestrator namespace, not over Nexus.
"""

from __future__ import annotations

import ast
import hashlib
import operator
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from shared.tools import ToolError, ToolRegistry

LOCAL_SERVICE = "local"
registry = ToolRegistry(service=LOCAL_SERVICE)
tool = registry.tool

_BINARY: dict[type[ast.operator], Callable[[Decimal, Decimal], Decimal]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Decimal], Decimal]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
MAX_EXPONENT = 1000


class CalculatorResult(BaseModel):
    expression: str
    result: str


class WeatherReport(BaseModel):
    city: str
    temperature_c: float
    conditions: str
    source: Literal["demo"]
    note: str


@tool(timeout=timedelta(seconds=5), max_attempts=1)
async def calculator(
    expression: Annotated[
        str,
        Field(
            min_length=1,
            max_length=500,
            description="Arithmetic expression, e.g. (17.5 * 4) + 3 or 2 ** 10.",
        ),
    ],
) -> CalculatorResult:
    """Evaluate an arithmetic expression exactly: + - * / // % ** and parentheses. No variables."""
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    with localcontext() as ctx:
        ctx.prec = 50
        try:
            value = _evaluate(tree.body)
        except (DivisionByZero, ZeroDivisionError, InvalidOperation):
            raise ToolError("division by zero or undefined result") from None
    text = format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    return CalculatorResult(expression=expression, result=text)


def _evaluate(node: ast.AST) -> Decimal:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Decimal(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent too large (limit {MAX_EXPONENT})")
        result: Decimal = _BINARY[type(node.op)](left, right)
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        unary: Decimal = _UNARY[type(node.op)](_evaluate(node.operand))
        return unary
    raise ToolError(f"unsupported element in expression: {ast.dump(node)[:60]}")


@tool(timeout=timedelta(seconds=10))
async def weather(
    city: Annotated[str, Field(min_length=1, max_length=100, description="City name, e.g. Paris.")],
) -> WeatherReport:
    """Current weather for a city."""
    seed = int.from_bytes(hashlib.sha256(city.strip().lower().encode()).digest()[:8], "big")
    conditions = ["sunny", "cloudy", "light rain", "windy", "foggy", "clear"][seed % 6]
    return WeatherReport(
        city=city.strip().title(),
        temperature_c=round(-5 + (seed % 400) / 10, 1),
        conditions=conditions,
        source="demo",
        note="demo data: the weather tool has no live provider configured",
    )


def openai_tool(spec_name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool in the shape OpenAI-compatible APIs (and LiteLLM) take."""
    return {
        "type": "function",
        "function": {"name": spec_name, "description": description, "parameters": parameters},
    }
