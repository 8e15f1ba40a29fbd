"""The tool SDK: publishing a tool means writing one typed async function.

    registry = ToolRegistry(service="hr")

    @registry.tool(timeout=timedelta(seconds=10))
    async def leave_balance(employee_id: str) -> LeaveBalance:
        '''Remaining leave days for an employee.'''

The registry turns the signature into a pydantic model, so the JSON schema the model sees and the
validation the handler runs before anything starts come from the same source.

This module is imported by workflow code (through `imports_passed_through`), so it does no I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import to_jsonable_python

from shared.approval import ApprovalPolicy, CallApproval, approval_problem
from shared.contract import (
    TOOL_NAME_PATTERN,
    ToolCall,
    ToolCatalog,
    ToolResult,
    ToolSpec,
    tool_workflow_id,
)

if TYPE_CHECKING:
    import temporalio.client

# The wire types live beside the Nexus contract; they are re-exported here for tool authors.
__all__ = [
    "TOOL_NAME_PATTERN",
    "RegisteredTool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCatalog",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "ToolWorkflowInput",
    "tool_workflow_id",
]


class ToolWorkflowInput(BaseModel):
    """What the team's generic tool workflow needs: the call and the spec's execution limits."""

    call: ToolCall
    service: str
    timeout_seconds: float
    max_attempts: int = 5
    # False for a tool that waits on workflows of its own worker (a stateful MCP session's
    # journal): as a local activity it would hold a workflow task slot while it waits for them.
    local_activity: bool = True


class ToolError(Exception):
    """Raised by a tool for a failure the caller should see as-is.

    `retryable=False` (the default) means running the tool again cannot help: out-of-range input,
    a missing prerequisite, a 4xx from the upstream API. Anything else raised by a tool is retried by
    the tool workflow's retry policy.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ToolArgumentsError(ValueError):
    """Arguments that do not match the tool's schema. The message names every bad field."""


@dataclass(frozen=True)
class ToolContext:
    """Injected into a tool that declares a parameter annotated `ToolContext`.

    Not part of the tool's schema: the model never sees it.
    """

    call_id: str
    conversation_id: str
    namespace: str
    task_queue: str
    client: temporalio.client.Client
    approval: CallApproval | None = None  # who approved the call, when its policy asked
    # Who asked: the conversation's user as the orchestrator asserts it (the gateway's
    # authenticated user when the gateway started the conversation), bound by the caller token
    # when the team verifies tokens. Empty when the conversation names nobody.
    user: str = ""


ToolFunction = Callable[..., Awaitable[Any]]
FunctionT = TypeVar("FunctionT", bound=ToolFunction)


@dataclass(frozen=True)
class RegisteredTool:
    spec: ToolSpec
    function: ToolFunction
    arguments_model: type[BaseModel]
    context_parameter: str | None
    max_attempts: int
    local_activity: bool = True

    def validate_arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the validated keyword arguments, or raise ToolArgumentsError naming each field."""
        try:
            model = self.arguments_model.model_validate(args)
        except ValidationError as err:
            raise ToolArgumentsError(describe_validation_error(self.spec.name, err)) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def approval_problem(self, call: ToolCall) -> str | None:
        """Why this call may not run without (another) approval, judged on its validated
        arguments; None when it may run. Raises ToolArgumentsError for bad arguments."""
        kwargs = self.validate_arguments(call.args)
        return approval_problem(
            self.spec.approval, self.spec.name, call.call_id, kwargs, call.approval
        )

    async def invoke(self, args: dict[str, Any], context: ToolContext) -> Any:
        kwargs = self.validate_arguments(args)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = context
        result = await self.function(**kwargs)
        return to_jsonable_python(result)


def describe_validation_error(tool_name: str, err: ValidationError) -> str:
    problems: dict[str, str] = {}
    for error in err.errors(include_url=False):
        # Union and validator tags appear in `loc` too; only field names and indexes help a caller.
        parts = [str(p) for p in error["loc"] if isinstance(p, int) or str(p).isidentifier()]
        field = ".".join(parts) or "(arguments)"
        problems.setdefault(field, f"'{field}': {error['msg']}")
    return f"invalid arguments for tool '{tool_name}': " + "; ".join(problems.values())


class ToolRegistry:
    """A team's tools, keyed by name. One registry per team service."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._tools: dict[str, RegisteredTool] = {}

    @overload
    def tool(self, function: FunctionT, /) -> FunctionT: ...

    @overload
    def tool(
        self,
        function: None = None,
        /,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        requires_approval: bool = False,
        approval: ApprovalPolicy | None = None,
        timeout: timedelta = timedelta(seconds=30),
        max_attempts: int = 5,
    ) -> Callable[[FunctionT], FunctionT]: ...

    def tool(
        self,
        function: Any = None,
        /,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        requires_approval: bool = False,
        approval: ApprovalPolicy | None = None,
        timeout: timedelta = timedelta(seconds=30),
        max_attempts: int = 5,
    ) -> Any:
        """Register an async function as a tool. Usable bare (`@tool`) or with options.

        `approval` says when a call needs a person's decision (shared.approval);
        `requires_approval=True` is short for `ApprovalPolicy.always()`.
        """

        def register(fn: ToolFunction) -> ToolFunction:
            self.add(
                fn,
                name=name,
                version=version,
                requires_approval=requires_approval,
                approval=approval,
                timeout=timeout,
                max_attempts=max_attempts,
            )
            return fn

        return register(function) if function is not None else register

    def add(
        self,
        function: ToolFunction,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        requires_approval: bool = False,
        approval: ApprovalPolicy | None = None,
        timeout: timedelta = timedelta(seconds=30),
        max_attempts: int = 5,
    ) -> RegisteredTool:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"tool {function.__qualname__} must be an async function")
        tool_name = name or function.__name__
        if tool_name in self._tools:
            raise ValueError(f"tool '{tool_name}' is already registered in '{self.service}'")
        arguments_model, context_parameter = _arguments_model(function, tool_name)
        description = inspect.cleandoc(function.__doc__ or "").strip()
        if not description:
            raise ValueError(f"tool '{tool_name}' needs a docstring: it is the model's description")
        schema = arguments_model.model_json_schema()
        schema.pop("title", None)
        policy = approval or (ApprovalPolicy.always() if requires_approval else ApprovalPolicy())
        policy.check_fields(tool_name, arguments_model.model_fields)
        spec = ToolSpec(
            name=tool_name,
            description=description,
            parameters=schema,
            version=version,
            approval=policy,
            timeout_seconds=timeout.total_seconds(),
            service=self.service,
        )
        registered = RegisteredTool(
            spec=spec,
            function=function,
            arguments_model=arguments_model,
            context_parameter=context_parameter,
            max_attempts=max_attempts,
        )
        self._tools[tool_name] = registered
        return registered

    def add_registered(self, registered: RegisteredTool) -> RegisteredTool:
        """Add a tool built elsewhere (an MCP server's, shared.mcp_tools) under its spec's name."""
        if registered.spec.name in self._tools:
            raise ValueError(
                f"tool '{registered.spec.name}' is already registered in '{self.service}'"
            )
        self._tools[registered.spec.name] = registered
        return registered

    def get(self, name: str) -> RegisteredTool | None:
        return self._tools.get(name)

    def catalog(self) -> ToolCatalog:
        return ToolCatalog(service=self.service, tools=[t.spec for t in self._tools.values()])

    def names(self) -> list[str]:
        return list(self._tools)

    def copy(self) -> ToolRegistry:
        """A new registry with the same tools, for publishing an extended catalog side by side."""
        clone = ToolRegistry(self.service)
        clone._tools = dict(self._tools)
        return clone

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def _arguments_model(function: ToolFunction, tool_name: str) -> tuple[type[BaseModel], str | None]:
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    context_parameter: str | None = None
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"tool '{tool_name}' cannot take *args or **kwargs")
        annotation = hints.get(parameter.name)
        if annotation is None:
            raise TypeError(f"tool '{tool_name}': parameter '{parameter.name}' needs a type")
        if annotation is ToolContext:
            context_parameter = parameter.name
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model = create_model(
        f"{tool_name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return model, context_parameter
