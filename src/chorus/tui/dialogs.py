"""Modal screens: a confirmation, and the settings."""

from __future__ import annotations

from typing import TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Footer, Input, Static

from chorus.chat.rules import VIEW_COUNT_MAX

T = TypeVar("T")


class Dialog(ModalScreen[T]):
    """A box in the middle of the screen, over the dimmed one below."""

    DEFAULT_CSS = """
    Dialog {
        align: center middle;
    }
    Dialog > Vertical {
        width: 60;
        max-width: 100%;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    Dialog Horizontal {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    Dialog Button {
        margin-left: 2;
    }
    """


class ConfirmScreen(Dialog[bool]):
    """A yes/no question; no is the default."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel")]

    def __init__(self, question: str, yes: str) -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.question), id="question")
            with Horizontal():
                yield Button("Cancel", id="no")
                yield Button(self.yes, id="yes", variant="error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def answer(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class SettingsScreen(Dialog[int | str | None]):
    """The view count, and the account: log out, or delete it. Dismissed with
    the new view count, "log_out", "delete_account", or None."""

    DEFAULT_CSS = """
    SettingsScreen > Vertical { width: 72; }
    SettingsScreen .error { display: none; color: $text-error; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, user: str, view_count: int) -> None:
        super().__init__()
        self.user, self.view_count = user, view_count

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"{self.user}: settings"
            yield Static(f"Messages per page (1 to {VIEW_COUNT_MAX}), shown at first and by each \"view more\":")
            yield Input(str(self.view_count), id="count", type="integer",
                        validators=[Integer(minimum=1, maximum=VIEW_COUNT_MAX)])
            yield Static(f"a number from 1 to {VIEW_COUNT_MAX}", id="problem", classes="error")
            with Horizontal():
                yield Button("Save", id="save", variant="primary")
                yield Button("Log out", id="log_out")
                yield Button("Delete account", id="delete_account", variant="error")
        yield Footer()

    @on(Input.Changed)
    def check(self, event: Input.Changed) -> None:
        valid = event.validation_result is None or event.validation_result.is_valid
        self.query_one("#problem").display = not valid
        self.query_one("#save", Button).disabled = not valid

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def save(self) -> None:
        field = self.query_one("#count", Input)
        if field.is_valid:
            self.dismiss(int(field.value))

    @on(Button.Pressed, "#log_out, #delete_account")
    def account(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
