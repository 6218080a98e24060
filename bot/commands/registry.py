"""One registry of chat commands: name, required role, typed parameters, and help from the docstring.

A command is registered with a decorator; its docstring's first paragraph is its English help and
the i18n catalogue holds the pt-BR one (`help.<name>`). Names may have two words ("models load"):
the first word is what Slack and Discord register, the second a subcommand. The same parser
serves every platform — Discord options are turned back into a line of text — so a wrong argument
gets the same short usage message everywhere.

Grammar of a line: words separated by spaces; "double" or 'single' quotes group words; a
`--name value` (or `--name=value`) option may appear anywhere; a `text` parameter takes the rest
of the line verbatim.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.commands.errors import UsageError
from bot.db.models.enums import UserRole
from bot.platforms.events import Card, Conversation, Place, Sender

ParamKind = Literal["str", "int", "text", "choice"]
ROLE_RANK: Mapping[UserRole, int] = {UserRole.VIEWER: 0, UserRole.OPERATOR: 1, UserRole.ADMIN: 2}
MAX_LINE_CHARS = 8000


def role_allows(held: UserRole, required: UserRole) -> bool:
    """Whether someone holding `held` may run a command that requires `required`."""
    return ROLE_RANK[held] >= ROLE_RANK[required]


@dataclass(frozen=True, slots=True)
class Param:
    """One argument: positional unless `option` (then `--name value`)."""

    name: str
    kind: ParamKind = "str"
    required: bool = True
    option: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 200
    default: Any = None
    help: str = ""

    def usage(self) -> str:
        """How the parameter appears in a usage line."""
        label = "|".join(self.choices) if self.kind == "choice" else self.name
        if self.kind == "text":
            label += "…"
        if self.option:
            return f"[--{self.name} <{label}>]"
        return f"<{label}>" if self.required else f"[{label}]"


@dataclass(frozen=True, slots=True)
class Principal:
    """The person behind a command, as the permission layer resolved them."""

    user_id: int | None
    username: str
    role: UserRole
    language: str
    known: bool


@dataclass
class CommandContext:
    """Everything a command handler may use; handlers never see platform objects."""

    sender: Sender
    place: Place
    principal: Principal
    args: dict[str, Any]
    conversation: Conversation
    services: Any
    spec: CommandSpec

    @property
    def language(self) -> str:
        """The language replies to this person are written in."""
        return self.principal.language

    def t(self, key: str, **params: Any) -> str:
        """A catalogue message in this person's language."""
        from bot.platforms.i18n import translate

        return translate(key, self.language, **params)


Reply = str | Card | None
Handler = Callable[[CommandContext], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A registered command."""

    path: tuple[str, ...]
    handler: Handler
    role: UserRole
    params: tuple[Param, ...]
    help: str
    audit_args: bool = True

    @property
    def name(self) -> str:
        """The command as typed, without the slash ("models load")."""
        return " ".join(self.path)

    def usage(self) -> str:
        """The usage line, e.g. `/kb add <title> <content…>`."""
        parts = [f"/{self.name}", *(param.usage() for param in self.params)]
        return " ".join(parts)

    @property
    def summary(self) -> str:
        """The first line of the help."""
        return self.help.split("\n", 1)[0]


@dataclass(frozen=True, slots=True)
class Token:
    """A word of the command line and where it starts in the raw text."""

    value: str
    start: int


def tokenize(line: str) -> list[Token]:
    """Split a command line into words, honouring quotes; unbalanced quotes are a usage error."""
    tokens: list[Token] = []
    index = 0
    length = len(line)
    while index < length:
        while index < length and line[index].isspace():
            index += 1
        if index >= length:
            break
        start = index
        value: list[str] = []
        while index < length and not line[index].isspace():
            char = line[index]
            if char in "\"'":
                closing = line.find(char, index + 1)
                if closing < 0:
                    raise UsageError("usage.unbalanced_quotes")
                value.append(line[index + 1 : closing])
                index = closing + 1
            else:
                value.append(char)
                index += 1
        tokens.append(Token("".join(value), start))
    return tokens


@dataclass
class ParsedLine:
    """A command line matched to a command, with validated arguments."""

    spec: CommandSpec
    args: dict[str, Any] = field(default_factory=dict)


class CommandRegistry:
    """All commands, looked up by their one- or two-word names."""

    def __init__(self) -> None:
        self._commands: dict[tuple[str, ...], CommandSpec] = {}
        self._defaults: dict[str, str] = {}

    def command(
        self,
        name: str,
        *,
        role: UserRole,
        params: Iterable[Param] = (),
        audit_args: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine as command `name`; its docstring is its help."""

        def register(handler: Handler) -> Handler:
            self.add(name, handler, role=role, params=params, audit_args=audit_args)
            return handler

        return register

    def add(
        self,
        name: str,
        handler: Handler,
        *,
        role: UserRole,
        params: Iterable[Param] = (),
        audit_args: bool = True,
    ) -> CommandSpec:
        """Register `handler` under `name` (the decorator's plain-call form, for the engine hook)."""
        path = tuple(name.lower().split())
        if not 1 <= len(path) <= 2 or not all(part.isidentifier() for part in path):
            raise ValueError(f"bad command name {name!r}")
        if path in self._commands:
            raise ValueError(f"command {name!r} is registered twice")
        if len(path) == 1 and any(key[0] == path[0] for key in self._commands if len(key) == 2):
            raise ValueError(f"{name!r} already has subcommands")
        if len(path) == 2 and (path[0],) in self._commands:
            raise ValueError(f"{path[0]!r} is already a plain command")
        doc = inspect.getdoc(handler)
        if not doc:
            raise ValueError(f"command {name!r} needs a docstring: it is the help text")
        param_tuple = tuple(params)
        text_params = [p for p in param_tuple if p.kind == "text" and not p.option]
        if text_params and param_tuple.index(text_params[0]) != len([p for p in param_tuple if not p.option]) - 1:
            raise ValueError(f"command {name!r}: a text parameter must be the last positional one")
        spec = CommandSpec(
            path=path,
            handler=handler,
            role=role,
            params=param_tuple,
            help=doc.split("\n\n", 1)[0].replace("\n", " "),
            audit_args=audit_args,
        )
        self._commands[path] = spec
        return spec

    def set_default(self, group: str, sub: str) -> None:
        """Make `/group` alone run `/group sub` (e.g. `/models` lists models)."""
        if (group, sub) not in self._commands:
            raise ValueError(f"no command {group} {sub}")
        self._defaults[group] = sub

    def specs(self) -> list[CommandSpec]:
        """Every command, sorted by name."""
        return sorted(self._commands.values(), key=lambda spec: spec.path)

    def top_level_names(self) -> list[str]:
        """The first words, as Slack and Discord register them."""
        return sorted({path[0] for path in self._commands})

    def subcommands(self, group: str) -> list[CommandSpec]:
        """The commands under one first word."""
        return [spec for spec in self.specs() if spec.path[0] == group and len(spec.path) == 2]

    def get(self, name: str) -> CommandSpec | None:
        """A command by its full name, or None."""
        return self._commands.get(tuple(name.lower().split()))

    def is_group(self, name: str) -> bool:
        """Whether `name` is a first word with subcommands."""
        return bool(self.subcommands(name.lower()))

    def has(self, name: str) -> bool:
        """Whether a first word is known at all."""
        lowered = name.lower()
        return (lowered,) in self._commands or self.is_group(lowered)

    def parse(self, name: str, text: str) -> ParsedLine:
        """Match `/name text` to a command and validate its arguments, or raise UsageError."""
        if len(text) > MAX_LINE_CHARS:
            raise UsageError("usage.too_long", limit=MAX_LINE_CHARS)
        group = name.lower().lstrip("/")
        tokens = tokenize(text)
        spec = self._commands.get((group,))
        if spec is None:
            subs = self.subcommands(group)
            if not subs:
                raise UsageError("usage.unknown_command", name=group)
            if tokens and (group, tokens[0].value.lower()) in self._commands:
                spec = self._commands[(group, tokens[0].value.lower())]
                tokens = tokens[1:]
            elif not tokens and group in self._defaults:
                spec = self._commands[(group, self._defaults[group])]
            else:
                choices = "|".join(sub.path[1] for sub in subs)
                error = UsageError("usage.pick_subcommand", name=group, choices=choices)
                error.usage = "\n".join(sub.usage() for sub in subs)
                raise error
        try:
            return ParsedLine(spec=spec, args=_bind(spec, tokens, text))
        except UsageError as error:
            error.usage = spec.usage()
            raise


def _bind(spec: CommandSpec, tokens: list[Token], text: str) -> dict[str, Any]:
    options = {p.name: p for p in spec.params if p.option}
    positional = [p for p in spec.params if not p.option]
    args: dict[str, Any] = {p.name: p.default for p in spec.params}
    words: list[Token] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        at_text = bool(positional) and positional[-1].kind == "text" and len(words) == len(positional) - 1
        if text.startswith("--", token.start):
            key, equals, inline = token.value[2:].partition("=")
            param = options.get(key)
            if param is not None:
                if not equals:
                    if index + 1 >= len(tokens):
                        raise UsageError("usage.option_needs_value", option=f"--{key}")
                    index += 1
                    inline = tokens[index].value
                args[param.name] = _convert(param, inline)
                index += 1
                continue
            if not at_text:
                raise UsageError("usage.unknown_option", option=f"--{_echo(key)}")
        if at_text:
            # The rest of the line, verbatim (quotes and spacing kept), minus trailing options.
            rest = _strip_trailing_options(text[token.start :], tokens[index:], options)
            words.append(Token(rest, token.start))
            for later in tokens[index + 1 :]:
                key, equals, inline = later.value[2:].partition("=")
                if text.startswith("--", later.start) and key in options:
                    following = tokens[tokens.index(later) + 1 :]
                    value = inline if equals else (following[0].value if following else "")
                    if not value:
                        raise UsageError("usage.option_needs_value", option=f"--{key}")
                    args[key] = _convert(options[key], value)
            break
        words.append(token)
        index += 1
    if len(words) > len(positional):
        raise UsageError("usage.too_many", extra=_echo(words[len(positional)].value))
    for param, word in zip(positional, words, strict=False):
        args[param.name] = _convert(param, word.value)
    for param in positional[len(words) :]:
        if param.required:
            raise UsageError("usage.missing", param=param.name)
    for param in options.values():
        if param.required and args[param.name] is None:
            raise UsageError("usage.missing", param=f"--{param.name}")
    return args


def _echo(value: str) -> str:
    """What of a rejected word a usage message may repeat: short plain words only.

    A user who pastes a token where an option or a number belongs must not see it posted back
    in a channel; anything long or key-shaped (letters mixed with digits) is shown as "…".
    """
    plain = value.isascii() and all(ch.isalnum() or ch in "._-" for ch in value)
    key_shaped = len(value) >= 12 and any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value)
    return value if value and len(value) <= 24 and plain and not key_shaped else "…"


def _strip_trailing_options(rest: str, tokens: list[Token], options: Mapping[str, Param]) -> str:
    """A text parameter ends where a known `--option` begins; unknown `--words` stay text."""
    base = tokens[0].start
    for token in tokens[1:]:
        key = token.value[2:].partition("=")[0]
        if token.value.startswith("--") and key in options:
            return rest[: token.start - base].strip()
    return rest.strip()


def _convert(param: Param, raw: str) -> Any:
    if len(raw) > param.max_length:
        raise UsageError("usage.value_too_long", param=param.name, limit=param.max_length)
    if param.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise UsageError("usage.not_a_number", param=param.name, value=_echo(raw)) from None
        if param.minimum is not None and value < param.minimum:
            raise UsageError("usage.too_small", param=param.name, minimum=param.minimum)
        if param.maximum is not None and value > param.maximum:
            raise UsageError("usage.too_large", param=param.name, maximum=param.maximum)
        return value
    if param.kind == "choice":
        lowered = raw.lower()
        if lowered not in param.choices:
            raise UsageError("usage.bad_choice", param=param.name, choices="|".join(param.choices))
        return lowered
    if not raw.strip():
        raise UsageError("usage.missing", param=param.name)
    return raw
