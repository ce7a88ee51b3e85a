"""The login and register screen: the name and password rules are checked as
the user types, and a server's refusal appears under the field it is about."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from chorus.chat.rules import NAME_MAX, NAME_RULE, PASSWORD_RULE, name_problem, password_problems
from chorus.client import ChorusError, Client, Conversation
from chorus.wire.results import LoggedIn

from .widgets import StatusBar

# Which field a server's refusal is about (the others go under the buttons).
FIELD_OF = {"invalid_name": "name", "name_taken": "name", "weak_password": "password", "bad_credentials": "password"}


class RuleCheck(Horizontal):
    """A rule, marked as kept (✓) or broken (✗) once something is typed."""

    DEFAULT_CSS = """
    RuleCheck {
        height: auto;
        padding: 0 1;
    }
    RuleCheck > .mark {
        width: 2;
    }
    RuleCheck > .text {
        width: 1fr;
    }
    """

    def __init__(self, rule: str, *, id: str) -> None:
        self.rule = rule
        self.mark = Static(classes="mark")
        self.text = Static(Text(rule, style="dim"), classes="text")
        super().__init__(self.mark, self.text, id=id)

    def check(self, value: str, ok: bool) -> None:
        style = "dim" if not value else "green" if ok else "red"
        self.mark.update(Text("" if not value else "✓" if ok else "✗", style=style))
        self.text.update(Text(self.rule, style=style))


class LoginScreen(Screen):
    DEFAULT_CSS = """
    LoginScreen {
        align: center middle;
    }
    #form {
        width: 66;
        max-width: 100%;
        height: auto;
        border: round $primary;
        border-title-align: center;
        padding: 0 1;
    }
    #form Input {
        margin-top: 1;
    }
    .error, #form-status {
        height: auto;
        padding: 0 1;
    }
    .error {
        display: none;
        color: $text-error;
        text-style: bold;
    }
    #buttons {
        height: auto;
        margin-top: 1;
    }
    #buttons Button {
        margin-right: 2;
    }
    """

    BINDINGS = [
        Binding("ctrl+l", "submit(False)", "Log in"),
        Binding("ctrl+n", "submit(True)", "Register"),
    ]

    class LoggedIn(Message):
        """The user logged in: the login's result and their conversations."""

        def __init__(self, result: LoggedIn, conversations: list[Conversation]) -> None:
            super().__init__()
            self.result, self.conversations = result, conversations

    def __init__(self, client: Client, notice: str = "") -> None:
        super().__init__()
        self.client = client
        self.notice = notice

    def compose(self) -> ComposeResult:
        yield StatusBar()
        with Vertical(id="form"):
            yield Input(placeholder="user name", id="name", max_length=NAME_MAX)
            yield RuleCheck(NAME_RULE, id="name-rule")
            yield Static(id="name-error", classes="error")
            yield Input(placeholder="password", password=True, id="password")
            yield RuleCheck(PASSWORD_RULE, id="password-rule")
            yield Static(id="password-error", classes="error")
            with Horizontal(id="buttons"):
                yield Button("Log in", id="login", variant="primary")
                yield Button("Register", id="register")
            yield Static(Text(self.notice), id="form-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#form").border_title = "chorus: log in, or register a new user"
        self.query_one("#name", Input).border_title = "user name"
        self.query_one("#password", Input).border_title = "password"
        self.query_one("#name", Input).focus()

    @on(Input.Changed, "#name")
    def check_name(self, event: Input.Changed) -> None:
        self.query_one("#name-rule", RuleCheck).check(event.value, name_problem(event.value) is None)
        self.show_error("name", "")

    @on(Input.Changed, "#password")
    def check_password(self, event: Input.Changed) -> None:
        problems = password_problems(event.value)
        self.query_one("#password-rule", RuleCheck).check(event.value, not problems)
        self.show_error("password", f"still needs {', '.join(problems)}" if event.value and problems else "")

    @on(Input.Submitted, "#name")
    def next_field(self) -> None:
        self.query_one("#password", Input).focus()

    @on(Input.Submitted, "#password")
    @on(Button.Pressed, "#login")
    def log_in(self) -> None:
        self.action_submit(False)

    @on(Button.Pressed, "#register")
    def register(self) -> None:
        self.action_submit(True)

    def action_submit(self, register: bool) -> None:
        name = self.query_one("#name", Input).value.strip()
        password = self.query_one("#password", Input).value
        if register:
            problem = name_problem(name)
            problems = password_problems(password)
            if problem or problems:
                self.show_error("name", problem or "")
                self.show_error("password", f"the password needs {', '.join(problems)}" if problems else "")
                return
        elif not name or not password:
            self.show_error("name" if not name else "password", "enter your user name and password")
            return
        self.authenticate(name, password, register)

    @work(exclusive=True, group="auth")
    async def authenticate(self, name: str, password: str, register: bool) -> None:
        self.busy("registering..." if register else "logging in...")
        try:
            if register:
                await self.client.register(name, password)
            result = await self.client.login(name, password)
            conversations = await self.client.conversations()
        except ChorusError as exc:
            self.busy("")
            self.show_error(FIELD_OF.get(exc.code), exc.message or exc.code)
            return
        self.post_message(self.LoggedIn(result, conversations))

    def busy(self, doing: str) -> None:
        for button in self.query(Button):
            button.disabled = bool(doing)
        self.query_one("#form-status", Static).update(Text(doing, style="italic"))

    def show_error(self, field: str | None, message: str) -> None:
        """Under the field it is about, or else under the buttons; "" clears it."""
        if field is None:
            self.query_one("#form-status", Static).update(Text(message, style="bold red"))
            return
        line = self.query_one(f"#{field}-error", Static)
        line.update(Text(message))
        line.display = bool(message)
